"""The pipeline's stages, one public function per module, and the model they train."""
