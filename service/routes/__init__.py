"""HTTP routes, one router per concern; each route is thin and calls the runtime."""
