"""Effect handlers: the commit layer's IO shell (see ``base`` for the contract)."""

from bftdeliberate.commit.handlers.base import EffectHandler, HandlerRegistry
from bftdeliberate.commit.handlers.command import CommandHandler
from bftdeliberate.commit.handlers.file import FileHandler
from bftdeliberate.commit.handlers.sqlite import SqliteKvHandler

__all__ = ["CommandHandler", "EffectHandler", "FileHandler", "HandlerRegistry",
           "SqliteKvHandler"]
