"""The data layer: FaceNet feature files found, labelled, validated, split, normalised and batched."""
