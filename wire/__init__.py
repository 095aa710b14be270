"""The native API's wire format: the JSON bodies (pydantic models) and the values (enums) that the server
(app/), the HTTP client (client/) and the database (storage/) share. Imports nothing of any of them."""
