"""Generate the published contract artefacts from the contract models (DESIGN.md §4).

    python -m contracts.generate           # rewrite contracts/schemas/ and contracts/asyncapi.yaml
    python -m contracts.generate --check   # exit 1, listing the files that are not up to date

Outputs, all derived from `contracts.events.EVENT_TYPES`, `contracts.rest` and (when it exists)
`contracts.catalog.Catalog`:

- `schemas/<type>.json`: one JSON Schema (draft 2020-12) per CloudEvents type, of the record
  value (the event data);
- `schemas/rest/<Body>.json`: the REST bodies of contracts/rest.py;
- `schemas/catalog.json`: the catalog file;
- `asyncapi.yaml`: an AsyncAPI 3.0.0 document of every channel (topic), message (event type,
  with its CloudEvents binary-mode headers and Kafka key) and operation (who sends, who
  receives), validated against the official AsyncAPI JSON Schema before it is written.

The output is deterministic (sorted schema keys, fixed document order) so `--check` and the
drift test in tests/unit/test_contracts.py catch a model change that was not regenerated.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import BaseModel

from contracts import rest
from contracts.common import Contract
from contracts.events import (
    APPROVAL_TOPIC,
    BUNDLE_TOPIC,
    CASE_TOPICS,
    CATALOG_TOPIC,
    DECISIONS_TOPIC,
    DELIVERY_TOPIC,
    DLQ_REPLAYS_TOPIC,
    DLQ_TOPIC,
    EVENT_TYPES,
    INTAKE_TOPIC,
    LICENSE_TOPIC,
    ROUTING_TOPIC,
    XREGION_TOPIC,
    EventType,
    ReplayRecord,
    types_on,
)
from contracts.registry import JSON_SCHEMA_DIALECT, SCHEMA_BASE_URL, asyncapi_validator

CONTRACTS_DIR = Path(__file__).resolve().parent
SCHEMAS_DIR = "schemas"
ASYNCAPI_FILE = "asyncapi.yaml"

# Bump when the published document changes meaning (a new event type, topic or header).
ASYNCAPI_DOC_VERSION = "1.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
CONTENT_TYPE = "application/json"
COMPONENT_SCHEMAS = "#/components/schemas/"

# -- who sends and receives what (DESIGN.md §2, §4) ---------------------------------------------

SERVICES = ("intake", "routing", "approval", "delivery")
DEPARTMENT_SYSTEMS = "department systems"
OPERATORS = "operators"  # `tongban dlq` (and the console's dead-letter view)

# Consumer groups of the services: service -> topics it receives.
RECEIVES: dict[str, tuple[str, ...]] = {
    # the case timeline shows every event of the case; its copy of the licence library (§7)
    "intake": (*CASE_TOPICS, LICENSE_TOPIC, BUNDLE_TOPIC),
    # submissions to route; and every case topic for the relay of cases across regions (§9)
    "routing": CASE_TOPICS,
    "approval": (ROUTING_TOPIC, DECISIONS_TOPIC, INTAKE_TOPIC, DELIVERY_TOPIC, BUNDLE_TOPIC),
    "delivery": (APPROVAL_TOPIC, INTAKE_TOPIC, BUNDLE_TOPIC),
}

TOPIC_DESCRIPTIONS: dict[str, str] = {
    INTAKE_TOPIC: "Applications taken at a counter or online, supplements and withdrawals.",
    ROUTING_TOPIC: "Routing outcomes: the handling level and department, or why there is none.",
    DECISIONS_TOPIC: "Decisions of the department systems on the cases routed to them.",
    APPROVAL_TOPIC: "Acceptance, supplement requests, approvals, denials and time-limit alarms.",
    DELIVERY_TOPIC: "Results issued and delivered, cases closed and rated.",
    DLQ_TOPIC: (
        "Dead letters: a record a consumer could not process (not a CloudEvent, not JSON, unknown "
        "type, schema-invalid, or a handler failing after bounded retries), copied unchanged "
        "with `dlq_*` headers saying why and from where."
    ),
    CATALOG_TOPIC: (
        "Every published version of the service-item catalog, one record per version. "
        "Compacted, one partition (versions stay in load order)."
    ),
    LICENSE_TOPIC: (
        "The licence library (DESIGN.md §7): every e-licence issued, and its revocation. Keyed "
        "by licence id and compacted, so a reader that starts late still finds each licence's "
        "last state. Intake keeps its copy, to attach a held licence to a later case."
    ),
    BUNDLE_TOPIC: (
        "Bundles (一件事一次办, DESIGN.md §8): one application for several items. Keyed by "
        "bundle id: submitted and withdrawn (intake), delivered at once, closed and rated "
        "(delivery), the bundle's time-limit alarms (approval, `ce_handledby` = the lead "
        "department). Each member's own events stay on the case topics with `bundle_id`."
    ),
    XREGION_TOPIC: (
        "What a region sends its partner regions (跨省通办, DESIGN.md §9); MirrorMaker 2 copies "
        "it to each partner as `<source alias>.xregion.out.v1`, and each region reads, from "
        "its partners' copies, the records whose `ce_tocity` names its own city code. "
        "`gov.case.forwarded.v1` (routing) hands a case over; `gov.case.adoption_refused.v1` "
        "(intake) answers one that does not verify. The events of a case handled across "
        "regions are relayed here too, unchanged (same `ce_id`, `ce_type`, `ce_source`, data) "
        "with `ce_tocity` and `ce_fromcity`: those of the handling region back to the origin, "
        "the origin's own later steps (withdrawal, pickup, rating) to the handling region."
    ),
    DLQ_REPLAYS_TOPIC: (
        "The log of dead-letter replays (`tongban dlq replay`), one partition, in replay "
        "order: each record says which dead letter was replayed, where its original record "
        "went back to (its original topic, same key, value and headers less the `dlq_*` ones, "
        "so the same `ce_id`), by whom and when. `tongban dlq` reads it to mark replayed "
        "letters and to refuse a second replay of one letter without `--force`."
    ),
}

CATALOG_FOLLOWER_NOTE = (
    "Every process reads the whole topic from the beginning (not a consumer group) and keeps "
    "its own copy of every catalog version."
)


DEPARTMENT_CHANNEL = "dept.cases.v1"


def _slug(name: str) -> str:
    return name.replace(" ", "-")


# -- JSON Schemas --------------------------------------------------------------------------------


def _sorted(value: Any) -> Any:
    """Recursively sort mapping keys (lists keep their order: `required`, `enum` mean it)."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _standalone_schema(
    model: type[BaseModel], *, schema_id: str, title: str, description: str | None
) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = schema_id
    schema["title"] = title
    if description:
        schema["description"] = description
    else:
        schema.pop("description", None)
    Draft202012Validator.check_schema(schema)
    result: dict[str, Any] = _sorted(schema)
    return result


def _own_doc(model: type[BaseModel]) -> str | None:
    """The model's own docstring (not one inherited from a base class)."""
    doc = vars(model).get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _event_description(event: EventType) -> str:
    doc = _own_doc(event.model)
    text = f"{event.summary}."
    if doc and doc.strip() != event.summary:
        text += f"\n\n{doc.strip()}"
    return (
        f"{text}\n\nData of CloudEvents type `{event.type}` on Kafka topic `{event.topic}` "
        f"(binary content mode: this is the record value), produced by {event.producer}."
    )


def event_schema(event: EventType) -> dict[str, Any]:
    return _standalone_schema(
        event.model,
        schema_id=f"{SCHEMA_BASE_URL}{event.type}.json",
        title=event.model.__name__,
        description=_event_description(event),
    )


def rest_models() -> dict[str, type[BaseModel]]:
    """The REST bodies of contracts/rest.py by their name there (aliases such as
    `SubmissionRequest = Application` included; models merely imported are not)."""
    found: dict[str, type[BaseModel]] = {}
    for name, value in vars(rest).items():
        if not (inspect.isclass(value) and issubclass(value, BaseModel)) or value is Contract:
            continue
        if value.__module__ == rest.__name__ or name != value.__name__:
            found[name] = value
    return dict(sorted(found.items()))


def catalog_model() -> type[BaseModel] | None:
    """`contracts.catalog.Catalog`, or None while that module does not exist."""
    if importlib.util.find_spec("contracts.catalog") is None:
        return None
    module = importlib.import_module("contracts.catalog")
    model = getattr(module, "Catalog", None)
    if model is None:
        return None
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise TypeError("contracts.catalog.Catalog is not a pydantic model")
    return model


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every standalone schema, by its path relative to contracts/schemas/."""
    schemas: dict[str, dict[str, Any]] = {}
    for event_type in sorted(EVENT_TYPES):
        schemas[f"{event_type}.json"] = event_schema(EVENT_TYPES[event_type])
    for name, model in rest_models().items():
        schemas[f"rest/{name}.json"] = _standalone_schema(
            model,
            schema_id=f"{SCHEMA_BASE_URL}rest/{name}.json",
            title=name,
            description=_own_doc(model),
        )
    catalog = catalog_model()
    if catalog is not None:
        schemas["catalog.json"] = _standalone_schema(
            catalog,
            schema_id=f"{SCHEMA_BASE_URL}catalog.json",
            title="Catalog",
            description=_own_doc(catalog),
        )
    return schemas


# -- AsyncAPI ------------------------------------------------------------------------------------


def _walk_refs(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value
        for item in value.values():
            yield from _walk_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_refs(item)


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The schema as an AsyncAPI component: `$defs` moved to components/schemas, refs rewritten.

    `$id` and `$schema` are dropped: a `$id` would rebase the component's `#/...` refs.
    """
    body = copy.deepcopy(schema)
    defs: dict[str, Any] = body.pop("$defs", {})
    body.pop("$id", None)
    body.pop("$schema", None)
    for node in _walk_refs([body, defs]):
        ref: str = node["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"unexpected $ref {ref!r} in a generated schema")
        node["$ref"] = COMPONENT_SCHEMAS + ref.removeprefix("#/$defs/")
    for name, definition in defs.items():
        if components.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas are both named {name!r}")
    return body


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


TRACEPARENT = _string(
    "W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/), where a trace "
    "exists; `ce_traceparent` carries the same value (CloudEvents distributed-tracing extension).",
    pattern="^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
)


def _ce_headers(event_type: str | None, *, handledby: bool) -> dict[str, Any]:
    """The CloudEvents 1.0 Kafka binary-mode headers of a tongban record."""
    topic = EVENT_TYPES[event_type].topic if event_type is not None else None
    subject = {
        CATALOG_TOPIC: "The catalog version id, e.g. `3101/catalog/7` (also the record key).",
        LICENSE_TOPIC: "The licence id (also the record key).",
        BUNDLE_TOPIC: "The bundle id (also the record key).",
    }.get(topic or "", "The case id (also the record key).")
    properties: dict[str, Any] = {
        "ce_specversion": _string("CloudEvents specversion.", const="1.0"),
        "ce_id": _string("Event id, unique per source; consumers deduplicate on it.", minLength=1),
        "ce_source": _string(
            "Event source, a URI reference: `/tongban/<service>` for tongban services.",
            minLength=1,
            examples=["/tongban/routing"],
        ),
        "ce_type": (
            _string("CloudEvents type.", const=event_type)
            if event_type is not None
            else _string("CloudEvents type.", minLength=1)
        ),
        "ce_time": _string("When the event happened, RFC 3339.", format="date-time"),
        "ce_subject": _string(subject, minLength=1),
        "content-type": _string("Content type of the record value.", const=CONTENT_TYPE),
    }
    required = list(properties)
    if handledby:
        properties["ce_handledby"] = _string(
            "CloudEvents extension `handledby`: the code of the department that handles the case.",
            minLength=1,
        )
        required.append("ce_handledby")
    properties["ce_traceparent"] = copy.deepcopy(TRACEPARENT)
    properties["traceparent"] = copy.deepcopy(TRACEPARENT)
    return {
        "type": "object",
        "description": "Kafka record headers: CloudEvents 1.0 Kafka binding, binary content mode.",
        "properties": properties,
        "required": required,
        "additionalProperties": True,
    }


def _key_binding(topic: str) -> dict[str, Any]:
    key = {
        CATALOG_TOPIC: (
            "The catalog version id, e.g. `3101/catalog/7`: one key per version, so compaction "
            "keeps every version."
        ),
        LICENSE_TOPIC: (
            "The licence id: a licence's issue and revocation go to one partition, in order, "
            "and compaction keeps its last state."
        ),
        BUNDLE_TOPIC: "The bundle id: every record of a bundle goes to one partition, in order.",
    }.get(topic, "The case id: every record of a case goes to one partition, in order.")
    return {"kafka": {"key": _string(key, minLength=1), "bindingVersion": KAFKA_BINDING_VERSION}}


def _event_message(event: EventType) -> dict[str, Any]:
    return {
        "name": event.model.__name__,
        "title": event.type,
        "summary": event.summary,
        "description": (
            f"CloudEvents type `{event.type}`; the record value is the event data, "
            f"JSON Schema {SCHEMA_BASE_URL}{event.type}.json."
        ),
        "contentType": CONTENT_TYPE,
        "headers": _ce_headers(event.type, handledby=event.handledby),
        "payload": {"$ref": COMPONENT_SCHEMAS + event.model.__name__},
        "bindings": _key_binding(event.topic),
    }


DEAD_LETTER = "DeadLetter"


def _dead_letter_message() -> dict[str, Any]:
    ce = _ce_headers(None, handledby=False)
    dlq: dict[str, Any] = {
        "dlq_reason": _string("Why the record was dead-lettered (at most 2000 characters)."),
        "dlq_source": _string("Who dead-lettered it: `<service>/<consumer>`."),
        "dlq_topic": _string("The topic the record was read from."),
        "dlq_partition": _string("Its partition, as a decimal string.", pattern="^[0-9]+$"),
        "dlq_offset": _string("Its offset, as a decimal string.", pattern="^[0-9]+$"),
        "dlq_truncated": _string(
            "Present when the letter is not the whole original (it did not fit the dead-letter "
            "topic): what was kept and what was dropped. The original stays at `dlq_topic`/"
            "`dlq_partition`/`dlq_offset`; such a letter is never replayed."
        ),
        "dlq_escaped_headers": _string(
            "Present when original header values were not UTF-8: their names, comma-separated "
            "(their bytes are written escaped, e.g. `\\xff`)."
        ),
    }
    return {
        "name": DEAD_LETTER,
        "title": "Dead letter",
        "summary": "A record a consumer could not process, with why and from where.",
        "description": (
            "The original key, value and headers, unchanged (a poison record may lack the "
            "CloudEvents headers or not be JSON at all), plus the `dlq_*` headers."
        ),
        "headers": {
            "type": "object",
            "description": "The original record's headers plus `dlq_reason` and `dlq_source`.",
            "properties": {**dlq, **ce["properties"]},
            "required": ["dlq_reason", "dlq_source"],
            "additionalProperties": True,
        },
        "payload": {"description": "The original record value, unchanged (any bytes)."},
        "bindings": {
            "kafka": {
                "key": _string("The original record key (the case id, when it had one)."),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


REPLAY = "ReplayRecord"


def _replay_message() -> dict[str, Any]:
    return {
        "name": REPLAY,
        "title": "Dead-letter replay",
        "summary": "One replay of a dead letter: which, where it went back to, by whom, when.",
        "description": (
            "Written by `tongban dlq replay` after it re-published the original record. JSON, "
            "not a CloudEvent: the only header is `content-type`."
        ),
        "contentType": CONTENT_TYPE,
        "headers": {
            "type": "object",
            "properties": {
                "content-type": _string("Content type of the record value.", const=CONTENT_TYPE)
            },
            "required": ["content-type"],
            "additionalProperties": True,
        },
        "payload": {"$ref": COMPONENT_SCHEMAS + REPLAY},
        "bindings": {
            "kafka": {
                "key": _string(
                    "The replayed dead letter's place, `<dlq topic>/<partition>/<offset>`: "
                    "every replay of one letter has the same key.",
                    minLength=1,
                ),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


@dataclass(frozen=True)
class _Operation:
    service: str
    action: str  # send | receive
    topic: str
    summary: str
    description: str | None = None

    @property
    def id(self) -> str:
        return f"{_slug(self.service)}.{self.action}.{self.topic}"


def _operations() -> list[_Operation]:
    ops: list[_Operation] = []
    # One producer per topic, but bundle.v1 (DESIGN.md §8): each service writes the bundle's
    # steps it owns there.
    producers: dict[tuple[str, str], list[str]] = {}
    for event in EVENT_TYPES.values():
        producers.setdefault((event.topic, event.producer), []).append(event.type)
    for (topic, producer), types in producers.items():
        if topic not in (BUNDLE_TOPIC, XREGION_TOPIC) and any(
            t == topic for t, p in producers if p != producer
        ):
            raise ValueError(f"topic {topic} has two producers")
        summary = f"{producer} publishes to {topic}"
        if topic in (BUNDLE_TOPIC, XREGION_TOPIC):
            summary += ": " + ", ".join(f"`{t}`" for t in types)
        ops.append(_Operation(producer, "send", topic, summary))
    for service, topics in RECEIVES.items():
        for topic in topics:
            ops.append(_Operation(service, "receive", topic, f"{service} consumes {topic}"))
        ops.append(
            _Operation(
                service,
                "send",
                DLQ_TOPIC,
                f"{service} dead-letters records it cannot process",
                "After bounded retries, or at once for a poison record; the partition moves on.",
            )
        )
    for service in SERVICES:
        ops.append(
            _Operation(
                service,
                "receive",
                CATALOG_TOPIC,
                f"{service} follows every catalog version",
                CATALOG_FOLLOWER_NOTE,
            )
        )
    ops += [
        _Operation(
            OPERATORS,
            "receive",
            DLQ_TOPIC,
            "operators list and inspect dead letters (tongban dlq list|show, the console)",
        ),
        _Operation(
            OPERATORS,
            "send",
            DLQ_REPLAYS_TOPIC,
            "tongban dlq replay records each replay",
            "After re-publishing the letter's original record to its original topic; a replay "
            "whose record could not be written is still refused by the consumers' inbox.",
        ),
        _Operation(
            OPERATORS,
            "receive",
            DLQ_REPLAYS_TOPIC,
            "tongban dlq reads the replays done so far",
            "To show which letters were replayed, and to refuse a second replay of one letter "
            "without --force.",
        ),
    ]
    order = {name: i for i, name in enumerate((*SERVICES, DEPARTMENT_SYSTEMS, OPERATORS))}
    topics = (
        *CASE_TOPICS,
        CATALOG_TOPIC,
        LICENSE_TOPIC,
        BUNDLE_TOPIC,
        XREGION_TOPIC,
        DLQ_TOPIC,
        DLQ_REPLAYS_TOPIC,
    )
    return sorted(
        ops, key=lambda op: (order[op.service], op.action != "send", topics.index(op.topic))
    )


def _channel_messages(topic: str) -> list[str]:
    if topic == DLQ_TOPIC:
        return [DEAD_LETTER]
    if topic == DLQ_REPLAYS_TOPIC:
        return [REPLAY]
    return types_on(topic)


def asyncapi_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    payloads: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type in sorted(EVENT_TYPES):
        event = EVENT_TYPES[event_type]
        name = event.model.__name__
        payload = _hoist(event_schema(event), components)
        if payloads.setdefault(name, payload) != payload:
            raise ValueError(f"two different payload models are both named {name!r}")
        messages[event_type] = _event_message(event)
    messages[DEAD_LETTER] = _dead_letter_message()
    messages[REPLAY] = _replay_message()
    if REPLAY in payloads:
        raise ValueError(f"an event payload model is also named {REPLAY!r}")
    payloads[REPLAY] = _hoist(ReplayRecord.model_json_schema(), components)
    if clash := set(payloads) & set(components):
        raise ValueError(f"payload names clash with nested schema names: {sorted(clash)}")
    schemas = _sorted({**components, **payloads})

    channels: dict[str, Any] = {}
    for topic in (
        *CASE_TOPICS,
        CATALOG_TOPIC,
        LICENSE_TOPIC,
        BUNDLE_TOPIC,
        XREGION_TOPIC,
        DLQ_TOPIC,
        DLQ_REPLAYS_TOPIC,
    ):
        kafka: dict[str, Any] = {"topic": topic}
        if topic in (CATALOG_TOPIC, DLQ_REPLAYS_TOPIC):
            kafka["partitions"] = 1
        if topic in (CATALOG_TOPIC, LICENSE_TOPIC):
            kafka["topicConfiguration"] = {"cleanup.policy": ["compact"]}
        kafka["bindingVersion"] = KAFKA_BINDING_VERSION
        channels[topic] = {
            "address": topic,
            "title": topic,
            "description": TOPIC_DESCRIPTIONS[topic],
            "messages": {
                name: {"$ref": f"#/components/messages/{name}"} for name in _channel_messages(topic)
            },
            "bindings": {"kafka": kafka},
        }

    # Department isolation: each department reads only its own cases (broker ACLs confine it).
    channels[DEPARTMENT_CHANNEL] = {
        "address": "dept.{department}.cases.v1",
        "title": "dept.<code>.cases.v1",
        "description": (
            "The cases routed to one department: a copy of every `gov.case.routed.v1` whose "
            "`ce_handledby` is that department, same event id, headers, key and value. "
            "Department systems read their own topic only (Strimzi KafkaUser ACLs, "
            "deploy/kubernetes/kafka-users.yaml) and answer on case.decisions.v1. Characters "
            "other than letters, digits and '-' in the department code are escaped as "
            "_<hex of the UTF-8 bytes>."
        ),
        "parameters": {"department": {"description": "the department code"}},
        "messages": {"gov.case.routed.v1": {"$ref": "#/components/messages/gov.case.routed.v1"}},
    }

    operations: dict[str, Any] = {}
    for op in (
        _Operation(
            "routing",
            "send",
            DEPARTMENT_CHANNEL,
            "routing copies each routed case to its department's topic",
        ),
        _Operation(
            DEPARTMENT_SYSTEMS,
            "receive",
            DEPARTMENT_CHANNEL,
            "a department system reads the cases routed to it",
        ),
    ):
        operations[op.id] = {
            "action": op.action,
            "channel": {"$ref": f"#/channels/{DEPARTMENT_CHANNEL}"},
            "summary": op.summary,
            "tags": [{"name": op.service}],
            "messages": [{"$ref": f"#/channels/{DEPARTMENT_CHANNEL}/messages/gov.case.routed.v1"}],
        }
    for op in _operations():
        body: dict[str, Any] = {
            "action": op.action,
            "channel": {"$ref": f"#/channels/{op.topic}"},
            "summary": op.summary,
        }
        if op.description:
            body["description"] = op.description
        body["tags"] = [{"name": op.service}]
        body["messages"] = [
            {"$ref": f"#/channels/{op.topic}/messages/{name}"}
            for name in _channel_messages(op.topic)
        ]
        operations[op.id] = body

    return {
        "asyncapi": "3.0.0",
        "id": "urn:tongban:events",
        "info": {
            "title": "tongban events",
            "version": ASYNCAPI_DOC_VERSION,
            "description": (
                "The Kafka topics of tongban, which routes government-service cases across "
                "administrative levels (DESIGN.md §4).\n\n"
                "Every record is a CloudEvents 1.0 event in binary content mode: the attributes "
                "are `ce_*` headers, the record value is the event data as JSON "
                f"(`{CONTENT_TYPE}`), the record key is the case id. `gov.case.routed.v1` and "
                "every approval event add `ce_handledby` (the code of the department deciding "
                "the case); `traceparent` is set where a trace "
                "exists. Each payload is also published as a standalone JSON Schema "
                f"(draft 2020-12) at {SCHEMA_BASE_URL}<type>.json. A contract changes only "
                "with a new version (a new type or topic name)."
            ),
        },
        "servers": {
            "local": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The development broker of `make up` (TONGBAN_KAFKA_BOOTSTRAP).",
            }
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def validate_asyncapi(document: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` unless the document is valid AsyncAPI 3.0.0."""
    error = best_match(asyncapi_validator().iter_errors(document))
    if error is not None:
        raise error


# -- rendering, writing, checking ----------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors or aliases, even where two mappings are the same object."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line text (descriptions) as literal blocks, the way a person would write it.
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|" if "\n" in data else None
    )


_Dumper.add_representer(str, _represent_str)


def render_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_yaml(document: dict[str, Any]) -> str:
    header = "# Generated by `python -m contracts.generate` from contracts/*.py: do not edit.\n"
    body = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return header + body


def render() -> dict[str, str]:
    """Every generated file's content, by its path relative to contracts/."""
    files = {
        f"{SCHEMAS_DIR}/{path}": render_json(schema) for path, schema in json_schemas().items()
    }
    document = asyncapi_document()
    validate_asyncapi(document)
    files[ASYNCAPI_FILE] = render_yaml(document)
    return dict(sorted(files.items()))


def _existing_schema_files(root: Path) -> set[str]:
    directory = root / SCHEMAS_DIR
    if not directory.is_dir():
        return set()
    return {path.relative_to(root).as_posix() for path in directory.rglob("*.json")}


def stale_files(expected: dict[str, str], root: Path = CONTRACTS_DIR) -> list[str]:
    """Paths (relative to `root`) that differ from `expected`, are missing, or are left over."""
    differing = [
        path
        for path, content in expected.items()
        if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != content
    ]
    leftover = _existing_schema_files(root) - set(expected)
    return sorted({*differing, *leftover})


def write(expected: dict[str, str], root: Path = CONTRACTS_DIR) -> list[str]:
    """Bring `root` up to date; return the paths written or removed."""
    changed = stale_files(expected, root)
    for path in changed:
        target = root / path
        if path in expected:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(expected[path], encoding="utf-8")
        else:
            target.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m contracts.generate",
        description="Generate contracts/schemas/ and contracts/asyncapi.yaml from the models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the files that differ from the generated ones",
    )
    args = parser.parse_args(argv)
    expected = render()
    if args.check:
        stale = stale_files(expected)
        if stale:
            print("contracts are not up to date; run `python -m contracts.generate`:")
            for path in stale:
                print(f"  contracts/{path}")
            return 1
        print(f"contracts up to date ({len(expected)} files)")
        return 0
    changed = write(expected)
    for path in changed:
        print(f"{'wrote' if path in expected else 'removed'} contracts/{path}")
    print(f"{len(changed)} of {len(expected)} files changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
