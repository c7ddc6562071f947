"""Optional inference engines behind the sampling and scoring stages."""
