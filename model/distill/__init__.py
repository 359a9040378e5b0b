"""Text distillation: the student's audio tower trained into the teacher's text space; installs as birdsearch.model.distill."""
