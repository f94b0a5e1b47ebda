"""FAS preprocessing config (yacs); the scripts load ``default.py`` by file path."""
