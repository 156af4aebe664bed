// Placeholder hook until the Mamba model lands: Mamba checkpoints are recognised and refused clearly.

func loadMamba(_ checkpoint: Checkpoint) throws -> LanguageModel {
    throw CheckpointError(file: checkpoint.path, "unsupported architecture '\(checkpoint.architecture)' (Mamba support is not built yet)")
}
