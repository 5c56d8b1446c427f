"""Reading runs back from MLflow for tables and figures."""
