"""The browser front end: static pages and their scripts."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
