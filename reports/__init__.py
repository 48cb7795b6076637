"""Jinja2 templates of memeval's HTML and Markdown reports (installed as `memeval_reports`)."""
