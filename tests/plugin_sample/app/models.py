from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dbkeel import TimestampMixin, VersionMixin


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(TimestampMixin, Base):
    __tablename__ = "plg_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    notes: Mapped[list["Note"]] = relationship(back_populates="user")


class Note(VersionMixin, Base):
    __tablename__ = "plg_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("plg_user.id"))
    text: Mapped[str] = mapped_column(String(200))
    user: Mapped[User] = relationship(back_populates="notes")
