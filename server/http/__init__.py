"""HTTP: the app (keys, OAuth tokens, guard), the REST routes and their OpenAPI document, the inspector."""
