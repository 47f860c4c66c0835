"""Analysis a reader of the paper expects: complexity tables (Tables 4–5), throughput, effective receptive fields."""
