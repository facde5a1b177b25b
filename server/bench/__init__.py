"""`chatdock bench`: the bench's measures, their floors, and the docs' tables written from its runs."""
