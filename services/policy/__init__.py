"""The policy of DESIGN.md §3, pure: what intake may take and where routing sends a case.

- `catalog_index`: one catalog version with dict lookups (built once per version).
- `intake_rules`: item in force, effective intake levels, office allowed, materials.
- `routing_rules`: rules R1-R7, one function each, and `route_case` applying them in order.
- `partner_rules`: what a counter here takes for an applicant of a partner region (§9).

Intake's checks and route preview and routing's decision call this same code, so no service
imports another. No I/O here: no HTTP, database or broker types (import-linter holds that, see
`[tool.importlinter]` in pyproject.toml). Reading and validating catalog files stays in
`services/common/catalog.py`.
"""
