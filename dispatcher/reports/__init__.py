"""Pages for people: maps, the request map, the transparency report and its disclosure control."""
