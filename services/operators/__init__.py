"""What the operators' tools share: the `tongban` command (services/cli) and the console
(services/console) read the same event facts and dead letters the same way.

This floor sits beside the CLI and the console, above `common`, `policy` and `contracts`; no
service imports it (pyproject.toml, [tool.importlinter]), so nothing here runs in a service.
- `event_facts`: what a case event says about its case, the filters over it, the masking;
- `dead_letters`: dead letters read back, and replayed after a fix;
- `catalog_file`: a catalog file (YAML or JSON) read into the dict that is validated.
"""
