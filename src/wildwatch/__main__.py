from wildwatch.cli import app

app()
