from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import func, select

from app.db import db
from app.models import User
from dbkeel.integrations.fastapi import ReadSession, Session, install

app = FastAPI()
install(app, db)


class UserIn(BaseModel):
    email: str


@app.post("/users", status_code=201)
async def create_user(body: UserIn, session: Session) -> dict[str, int]:
    user = User(email=body.email)
    session.add(user)
    await session.flush()
    return {"id": user.id}


@app.get("/users/count")
async def count(session: ReadSession) -> dict[str, int]:
    return {"count": int(await session.scalar(select(func.count(User.id))))}
