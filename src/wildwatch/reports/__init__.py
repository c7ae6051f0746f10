"""Reports: metrics (numpy only) apart from plots (matplotlib) apart from HTML pages."""
