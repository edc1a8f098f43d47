"""segue.models: EnCodec and the MusicGen / AudioGen language model, loaded from published checkpoints."""
