"""The SoLA API's client side: a typed HTTP client (http.py) and the `sola edits ...`, `sola ask` and
`sola route` commands built on it (cli.py). Imports nothing of the server: the API's bodies come from wire/."""
