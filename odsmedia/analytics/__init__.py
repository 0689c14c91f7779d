"""Audience analytics without cookies or addresses, the host's session
report and the operator's view (docs/privacy.md, "Analytics")."""
