"""Human and simulated feedback: judgments, annotators, aggregation and agreement."""
