"""Operations: overload control, call records, metrics and status."""
