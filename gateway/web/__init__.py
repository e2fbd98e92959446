"""Portal: FastAPI app factory, routes per resource, templates. Translates HTTP to calls."""
