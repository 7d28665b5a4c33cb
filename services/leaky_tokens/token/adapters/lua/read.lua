-- A[6] levels. Returns the stored states (three numbers per level); writes nothing.
return load_all(parse_levels(split(A[6])))
