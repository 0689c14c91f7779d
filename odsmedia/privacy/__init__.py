"""What the privacy policy promises, in code: regions instead of IPs,
retention, export and deletion."""
