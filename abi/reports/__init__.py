"""Tables, verdict text and glued numbers for the book, computed from result files only."""
