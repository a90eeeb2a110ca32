"""Column names and event weights shared by every data module."""

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
EVENT = "event"
WEIGHT = "weight"
CATEGORY = "category"
CREATED_AT = "created_at"

INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, EVENT)
CATALOG_COLUMNS = (ITEM_ID, CATEGORY, CREATED_AT)

# Implicit-feedback strength of each event type, used when a row carries no explicit weight.
EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "purchase": 4.0,
    "rating": 1.0,
}
DEFAULT_EVENT_WEIGHT = 1.0

INTERACTIONS_FILE = "interactions.parquet"
CATALOG_FILE = "items.parquet"
