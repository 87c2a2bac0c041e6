"""The log's life: archive segments, replay and digest (see DESIGN.md, "The log's life")."""
