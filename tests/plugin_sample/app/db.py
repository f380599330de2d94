from app.models import Base
from dbkeel import DatabaseManager

# The application's own manager, created at import time as services do.
db = DatabaseManager(metadata=Base.metadata)
