"""Recording live sessions to segmented HLS episodes, and serving them back."""
