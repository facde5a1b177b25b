"""Operations: metrics, request observation, tracing, logs."""
