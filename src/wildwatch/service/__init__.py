"""The web service: a JSON API and a web page over one Predictor."""
