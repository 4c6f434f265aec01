"""What one request may ask of the Backend facade (backend/serve/service.py and its views): every size a request
names is checked against these, so no request costs much more than it looks."""

MAX_TEXT = 20_000  # characters of text to search or steer
MAX_SEARCH_TOKENS = 1024  # tokens of it encoded (or the model's own limit)
MAX_QUERY = 200  # characters of an explanation search
MAX_ROWS = 10_000  # rows of one /latents page
MAX_OFFSET = 10_000_000  # any offset past this is an error (no SAE has that many latents)
MAX_RESULTS = 1_000  # /search_text top_n, /search_features limit, /compare page size
MAX_NEAREST = 200
