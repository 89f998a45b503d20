"""Names of the batch columns the data layer derives for objectives.

data_pipelines/vocab.py writes them into every pretraining batch (from the
train split's metadata, with vocabularies fitted there); the multimodal
objectives read them. One place for the names, so neither side spells them
on its own. Standard library only.
"""
TABULAR_NUMERIC = "tabular_numeric"          # float32 [B, F]: standardised numbers
TABULAR_CATEGORICAL = "tabular_categorical"  # int32 [B, K]: category codes (0: missing or unseen)
TEXT_TOKENS = "text_tokens"                  # int32 [B, L]: <cls> + word ids, 0-padded
