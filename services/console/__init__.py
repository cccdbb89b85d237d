"""The operators' web console: live events, case timelines, SLA, triage, dead letters, lag."""
