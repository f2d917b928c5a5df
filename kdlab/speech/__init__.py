"""Speech building blocks shared by the keyword-spotting and CTC plugins: espeak-ng synthesis,
audio files, log-mel features, corpus generators, streaming inference."""
