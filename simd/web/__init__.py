"""The HTTP layer: `create_app(config, service)` (`simd.web.app`) builds the Flask app; the `api`
blueprint answers the JSON API and `/healthz`, `pages` the search page; `context` holds what they
share; `server` serves the app with waitress (never Flask's development server). The work itself is
done by `simd.search.SearchService`.
"""

from simd.web.app import create_app

__all__ = ["create_app"]
