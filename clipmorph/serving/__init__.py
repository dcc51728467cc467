"""The local stack: process supervision, Redis connections and the REST client."""
