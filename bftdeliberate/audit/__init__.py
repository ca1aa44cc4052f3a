"""Placeholder: built by a later issue (see DESIGN.md section 1)."""
