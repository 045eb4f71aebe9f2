"""What people read: tables, figures, each notebook's closing reading, the summary across datasets."""
