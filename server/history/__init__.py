"""History in and out: export and import as JSON Lines, and the progress bar."""
