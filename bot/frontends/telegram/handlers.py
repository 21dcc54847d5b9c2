"""Commands, prompts and button presses: Telegram updates -> service calls -> replies.

Each handler checks its own arguments and answers with what is allowed; every refusal from the
service is a `UserError` shown in the user's language. Edited messages are ignored (editing a
prompt must not queue it again), and so is anything in a group that is not a command for this
bot. The results themselves are sent by delivery.py when the jobs finish.
"""

from __future__ import annotations

import logging
import string
from collections import OrderedDict
from dataclasses import replace
from typing import Awaitable, Callable

from telegram import Chat, ForceReply, Message, Update, User
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import InvalidToken, TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

from bot.config import Config
from bot.core.errors import UserError
from bot.core.jobs import Origin, is_public_id, short_id
from bot.core.prompt_syntax import prompt_with_lora_tags
from bot.core.request import parse_prompt
from bot.core.service import Service, Submitted
from bot.frontends.listings import read_history, read_models, read_queue
from bot.frontends.telegram import describing, images, keyboards, listings
from bot.frontends.telegram.delivery import reply_kwargs, send_png
from bot.frontends.telegram.errors import loggable
from bot.frontends.telegram.status_message import delete_quietly
from bot.frontends.telegram.strings import explain, render
from bot.frontends.telegram.texts import MAX_ALERT, MAX_TEXT
from bot.frontends.text import clip
from bot.frontends.wording import reworded

log = logging.getLogger(__name__)

# Command -> its description key, in the order clients list them.
COMMANDS = {
    "imagine": "tg_cmd_imagine",
    "model": "tg_cmd_model",
    "queue": "tg_cmd_queue",
    "cancel": "tg_cmd_cancel",
    "settings": "tg_cmd_settings",
    "history": "tg_cmd_history",
    "describe": "tg_cmd_describe",
    "help": "tg_cmd_help",
    "start": "tg_cmd_start",
}
HISTORY_LENGTH = 10
MAX_OPEN_REMIXES = 1000  # Remix questions remembered; the oldest is forgotten first

Handler = Callable[[Message, Origin, str, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


class Handlers:
    def __init__(self, service: Service, config: Config) -> None:
        self.service = service
        self.config = config
        self.outputs = config.storage.outputs_path()
        # Remix questions waiting for their answer: (chat, question message) -> (user, job, image).
        # In memory: after a restart the question is simply not an open one any more.
        self.remixes: OrderedDict[tuple[int, int], tuple[int, str, int]] = OrderedDict()

    def register(self, app: Application) -> None:
        new = filters.UpdateType.MESSAGE  # new messages only, never edits
        commands: dict[str, Handler] = {
            "imagine": self.imagine, "model": self.model, "queue": self.queue, "cancel": self.cancel,
            "settings": self.settings, "history": self.history, "help": self.help, "start": self.start,
            "describe": self.describe,
            # Admins only, so not in COMMANDS (the menu every user sees); /help lists them to admins.
            "ban": self.ban, "unban": self.unban,
        }
        for name, handler in commands.items():
            # CommandHandler takes "/cmd" and "/cmd@thisbot" and leaves "/cmd@otherbot" alone.
            app.add_handler(CommandHandler(name, self._checked(handler), filters=new))
        app.add_handler(CallbackQueryHandler(self.describe_button, pattern=describing.BUTTON_PATTERN))
        app.add_handler(CallbackQueryHandler(self.button))
        # A reply to the bot's Remix question is the new prompt, in groups too (bots see replies to
        # their own messages); before the handlers that take private text as a prompt.
        app.add_handler(MessageHandler(new & filters.TEXT & ~filters.COMMAND & _RemixAnswer(self.remixes),
                                       self._checked(self.remix_answer)))
        app.add_handler(MessageHandler(new & filters.COMMAND, self._checked(self.unknown_command, addressed_only=True)))
        app.add_handler(MessageHandler(new & filters.ChatType.PRIVATE & filters.TEXT, self._checked(self.prompt)))
        # A photo (or an image sent as a file) with a caption is an image prompt: any caption in a
        # private chat, a caption starting with /imagine in a group.
        pictures = filters.PHOTO | filters.Document.IMAGE
        app.add_handler(MessageHandler(new & pictures, self._checked(self.picture, addressed=images.for_me)))
        app.add_handler(MessageHandler(new & filters.ChatType.PRIVATE, self._checked(self.unsupported)))
        app.add_error_handler(self.error)

    # --- common ------------------------------------------------------------------------------------

    def _checked(self, handler: Handler, addressed_only: bool = False, addressed=None):
        """`handler` behind the checks every message gets: who and where, an allowed chat (else a
        refusal), UserErrors shown to the user; `addressed_only`: silent unless the message is for
        this bot (a private chat, or a command naming it)."""
        async def run(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            message, user, chat = update.effective_message, update.effective_user, update.effective_chat
            if message is None or user is None or chat is None:
                return
            if addressed_only and not _addressed_to_me(message, chat, context.bot.username):
                return
            if addressed is not None and not addressed(message, chat, context.bot.username):
                return
            if not self._allowed(chat, user):
                log.info("telegram: refused chat %s (not in [telegram] allowed_chats)", chat.id)
                await reply(message, render("tg_chat_not_allowed", user.language_code, chat=chat.id))
                return
            origin = self._origin(user, chat, {"reply_to": message.message_id})
            try:
                await handler(message, origin, command_args(message), context)
            except UserError as error:
                await reply(message, explain(error, origin.locale))
        return run

    def _allowed(self, chat: Chat, user: User) -> bool:
        allowed = self.config.telegram.allowed_chats
        # Admins may always talk to the bot privately (to set it up, for one).
        return not allowed or chat.id in allowed or (chat.type == ChatType.PRIVATE and self._is_admin(user))

    def _is_admin(self, user: User) -> bool:
        return user.id in self.config.telegram.admins

    def _origin(self, user: User, chat: Chat, reply: dict) -> Origin:
        return Origin(platform="telegram", user_id=str(user.id), chat_id=str(chat.id),
                      user_name=user.username or user.full_name, reply=reply,
                      locale=user.language_code, is_admin=self._is_admin(user))

    async def _queue(self, bot, chat_id: int, reply_to: int | None, thread: int | None, origin: Origin,
                     submit: Callable[[Origin], Awaitable[Submitted]]) -> None:
        """Answer at once, then queue. The answer is the job's status message; its id travels with
        the job, so progress and the result find it again even after a restart."""
        status = await bot.send_message(chat_id, render("tg_queueing", origin.locale), **reply_kwargs(reply_to, thread))
        origin = replace(origin, reply={"reply_to": reply_to, "status": status.message_id, "thread": thread})
        try:
            await submit(origin)  # the "queued" event turns the status message into "#N queued"
        except UserError as error:
            await bot.edit_message_text(clip(explain(error, origin.locale), MAX_TEXT), chat_id=chat_id,
                                        message_id=status.message_id)

    # --- prompts -------------------------------------------------------------------------------------

    async def imagine(self, message: Message, origin: Origin, args: str, context) -> None:
        """/imagine PROMPT; in reply to a picture, that picture is the image prompt."""
        replied = message.reply_to_message
        picture = images.picture_of(replied) if replied is not None else None
        if picture is not None:
            await self._imagine_from(picture, message, origin, args, context)
            return
        await self._queue(context.bot, message.chat_id, message.message_id, _thread(message), origin,
                          lambda o: self.service.submit(args, o))

    async def picture(self, message: Message, origin: Origin, args: str, context) -> None:
        """A photo or image file with a caption: the caption is the prompt, the picture the image prompt."""
        if describing.is_describe(message.caption):
            await self._describe(images.picture_of(message), message, origin, context)
            return
        caption = images.caption_prompt(message)
        if not caption:
            await reply(message, render("tg_picture_needs_caption", origin.locale))
            return
        await self._imagine_from(images.picture_of(message), message, origin, caption, context)

    async def describe(self, message: Message, origin: Origin, args: str, context) -> None:
        """/describe in reply to a picture (or as a picture's caption): prompts it suggests."""
        replied = message.reply_to_message
        picture = images.picture_of(replied) if replied is not None else None
        if picture is None:
            await reply(message, render("tg_describe_usage", origin.locale))
            return
        await self._describe(picture, message, origin, context)

    async def _describe(self, picture, message: Message, origin: Origin, context) -> None:
        data = await images.download(context.bot, picture, self.config.limits.max_upload_bytes)
        prompts = await self.service.describe(data, origin)
        await message.get_bot().send_message(
            message.chat_id, clip(describing.text(prompts, origin.locale), MAX_TEXT),
            reply_markup=describing.keyboard(len(prompts)), **reply_kwargs(message.message_id, _thread(message)))

    async def describe_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A number under /describe's answer: imagine that prompt (read back from the message)."""
        query = update.callback_query
        user, message = query.from_user, query.message
        locale = user.language_code
        prompt = describing.prompt_of(getattr(message, "text", None), query.data)
        if prompt is None or not isinstance(message, Message):
            await query.answer(render("tg_button_unknown", locale), show_alert=True)
            return
        if not self._allowed(message.chat, user):
            await query.answer(render("tg_chat_not_allowed", locale, chat=message.chat.id), show_alert=True)
            return
        await query.answer(render("tg_button_queueing", locale))
        origin = self._origin(user, message.chat, {"reply_to": message.message_id})
        await self._queue(context.bot, message.chat_id, message.message_id, _thread(message), origin,
                          lambda o: self.service.submit(prompt, o))

    async def _imagine_from(self, picture, message: Message, origin: Origin, prompt: str, context) -> None:
        data = await images.download(context.bot, picture, self.config.limits.max_upload_bytes)
        await self._queue(context.bot, message.chat_id, message.message_id, _thread(message), origin,
                          lambda o: self.service.submit(prompt, o, image=data))

    async def prompt(self, message: Message, origin: Origin, args: str, context) -> None:
        """A plain text message in a private chat is a prompt."""
        await self.imagine(message, origin, message.text or "", context)

    async def unsupported(self, message: Message, origin: Origin, args: str, context) -> None:
        await reply(message, render("tg_unsupported", origin.locale))

    async def unknown_command(self, message: Message, origin: Origin, args: str, context) -> None:
        command = (message.text or "").split(maxsplit=1)[0].partition("@")[0]
        await reply(message, render("tg_unknown_command", origin.locale, command=clip(command, 64)))

    # --- information -------------------------------------------------------------------------------

    async def start(self, message: Message, origin: Origin, args: str, context) -> None:
        await reply(message, render("tg_start", origin.locale) + "\n\n" + render("tg_help", origin.locale))

    async def help(self, message: Message, origin: Origin, args: str, context) -> None:
        text = render("tg_help", origin.locale)
        if origin.is_admin:
            text += "\n\n" + render("tg_help_admin", origin.locale)
        await reply(message, text)

    async def queue(self, message: Message, origin: Origin, args: str, context) -> None:
        await reply(message, listings.queue_text(await read_queue(self.service, origin), origin.locale))

    async def history(self, message: Message, origin: Origin, args: str, context) -> None:
        lines = await read_history(self.service, origin, HISTORY_LENGTH)
        await reply(message, listings.history_text(lines, origin.locale))

    # --- changing things -------------------------------------------------------------------------

    async def cancel(self, message: Message, origin: Origin, args: str, context) -> None:
        """/cancel: your latest unfinished job; /cancel a3f09c: yours by the short id the bot showed
        (an admin gives a job's whole public id to stop someone else's)."""
        if args:
            ref = args.lstrip("#").lower()
            if len(args.split()) != 1 or not all(c in string.hexdigits for c in ref):
                await reply(message, render("tg_cancel_usage", origin.locale))
                return
            public_id = ref if is_public_id(ref) else (await self.service.own_job_by_prefix(ref, origin)).public_id
            status = await self.service.cancel(public_id, origin)
        else:
            with reworded(nothing_to_cancel="tg_cancel_nothing"):
                job_id, status = await self.service.cancel_latest(origin)
            public_id = (await self.service.job(job_id)).public_id
        key = "tg_cancel_done" if status == "cancelled" else "tg_cancel_stopping"
        await reply(message, render(key, origin.locale, job=short_id(public_id)))

    # --- administration ------------------------------------------------------------------------------

    async def ban(self, message: Message, origin: Origin, args: str, context) -> None:
        """/ban USER_ID REASON, or /ban REASON in reply to the user's message (admins only). The
        core refuses non-admins too and writes the audit log; the check here keeps the usage text
        (and whose message it was) from non-admins."""
        if not origin.is_admin:
            raise UserError("not_admin")
        user_id, reason = _target_user(message, args)
        if user_id is None:
            await reply(message, render("tg_ban_usage", origin.locale))
            return
        await self.service.ban(f"telegram:{user_id}", reason, origin)
        await reply(message, render("tg_banned", origin.locale, user=user_id, reason=reason.strip()))

    async def unban(self, message: Message, origin: Origin, args: str, context) -> None:
        """/unban USER_ID, or /unban in reply to the user's message (admins only)."""
        if not origin.is_admin:
            raise UserError("not_admin")
        user_id, rest = _target_user(message, args)
        if user_id is None or rest:
            await reply(message, render("tg_unban_usage", origin.locale))
            return
        await self.service.unban(f"telegram:{user_id}", origin)
        await reply(message, render("tg_unbanned", origin.locale, user=user_id))

    async def model(self, message: Message, origin: Origin, args: str, context) -> None:
        """/model lists; admins: /model NAME (this chat), /model default NAME (every chat), /model reload."""
        words = args.split()
        locale = origin.locale
        if not words:
            listing = await read_models(self.service, origin)
            await reply(message, listings.models_text(listing, locale, is_admin=origin.is_admin))
        elif words == ["reload"]:
            summary = await self.service.reload_models(origin)
            none = render("tg_none", locale)
            await reply(message, render("tg_model_reloaded", locale, added=", ".join(summary["added"]) or none,
                                        changed=", ".join(summary["changed"]) or none,
                                        removed=", ".join(summary["removed"]) or none))
        elif words[0] == "default" and len(words) == 2:
            await self.service.set_default_variant("global", words[1], origin)
            await reply(message, render("tg_model_set_global", locale, name=words[1]))
        elif len(words) == 1:
            await self.service.set_default_variant("chat", words[0], origin)
            await reply(message, render("tg_model_set_chat", locale, name=words[0]))
        else:
            await reply(message, render("tg_model_usage", locale))

    async def settings(self, message: Message, origin: Origin, args: str, context) -> None:
        """/settings shows the chat's default flags; /settings --ar 3:2 --steps 30 --no blurry sets
        them; /settings clear removes them. In groups only admins (of the bot or the group) change them."""
        locale = origin.locale
        if not args:
            flags = (await self.service.default_flags(origin))["chat"]
            await reply(message, render("tg_settings_current", locale, flags=flags) if flags
                        else render("tg_settings_none", locale))
            return
        if args.lower() in ("clear", "reset", "off"):
            await self._set_chat_flags("", message, origin, context)
            await reply(message, render("tg_settings_cleared", locale))
            return
        options = parse_prompt("x " + args)  # "x": a stand-in prompt, so the flags parse as in /imagine
        # Seed, count and model belong to each request (or /model), not to a chat's defaults.
        said = [name for name in ("seed", "count", "model") if getattr(options, name) is not None]
        if options.prompt != "x" or said:
            await reply(message, render("tg_settings_usage", locale))
            return
        await self.service.resolve_request(options, origin)  # over a limit? say so now, not on every request
        await self._set_chat_flags(args, message, origin, context)
        await reply(message, render("tg_settings_set", locale, flags=args))

    async def _set_chat_flags(self, flags: str, message: Message, origin: Origin, context) -> None:
        """The core decides who may; this tells it whether the sender runs this chat."""
        origin = replace(origin, manages_chat=await self._manages_chat(message, origin, context))
        with reworded(chat_admins_only="tg_settings_admins_only"):
            await self.service.set_chat_flags(flags, origin)

    async def _manages_chat(self, message: Message, origin: Origin, context) -> bool:
        """A private chat is its user's; in a group, Telegram says who its administrators are."""
        if message.chat.type == ChatType.PRIVATE:
            return True
        if origin.is_admin:
            return False  # the bot's admins may anyway: no need to ask Telegram
        try:
            member = await context.bot.get_chat_member(message.chat_id, int(origin.user_id))
        except TelegramError as error:
            log.info("telegram: could not check the admins of chat %s: %s", message.chat_id, loggable(error))
            return False
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    # --- buttons -----------------------------------------------------------------------------------

    async def button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        user = query.from_user
        locale = user.language_code
        button = keyboards.decode(query.data)
        message = query.message
        if button is None or message is None:
            await query.answer(render("tg_button_unknown", locale), show_alert=True)
            return
        chat = message.chat
        if not self._allowed(chat, user):
            await query.answer(render("tg_chat_not_allowed", locale, chat=chat.id), show_alert=True)
            return
        origin = self._origin(user, chat, {"reply_to": message.message_id})
        thread = message.message_thread_id if isinstance(message, Message) and message.is_topic_message else None
        answered = False
        try:
            if button.action == "remix":
                await self._ask_remix(context.bot, query, button, origin, thread)
                answered = True
            elif button.action in ("reroll", "vary_subtle", "vary_strong", "upscale"):
                await query.answer(render("tg_button_queueing", locale))
                answered = True  # a refusal goes into the status message, like /imagine's
                await self._queue(context.bot, chat.id, message.message_id, thread, origin,
                                  lambda o: self.service.submit_derived(button.job, button.action, o, button.index))
            elif button.action == "png":
                job = await self.service.job(button.job)
                await query.answer(render("tg_png_sending", locale))
                answered = True
                await send_png(context.bot, job, self.outputs, chat.id, message.message_id, thread)
            elif button.action == "delete":
                await self.service.owned_job(button.job, origin)  # the owner's or an admin's
                for message_id in sorted({message.message_id, *button.message_ids}):
                    await delete_quietly(context.bot, chat.id, message_id)
                await query.answer(render("tg_deleted", locale))
            elif button.action == "cancel":
                job = await self.service.job(button.job)
                status = await self.service.cancel(job.public_id, origin)
                key = "tg_cancel_done" if status == "cancelled" else "tg_cancel_stopping"
                await query.answer(render(key, locale, job=short_id(job.public_id)))
        except UserError as error:
            if not answered:
                await query.answer(clip(explain(error, locale), MAX_ALERT), show_alert=True)
            else:
                await context.bot.send_message(chat.id, clip(explain(error, locale), MAX_TEXT),
                                               **reply_kwargs(message.message_id, thread))

    async def _ask_remix(self, bot, query, button: keyboards.Button, origin: Origin, thread: int | None) -> None:
        """Remix: ask for the new prompt (the old one shown, LoRAs as tags) as a reply the user's
        app opens at once; `remix_answer` takes the reply."""
        job = await self.service.job(button.job)
        if job.status != "done" or not 0 <= button.index < len(job.images):
            raise UserError("no_such_image", job=short_id(job.public_id), index=button.index + 1)
        await query.answer()
        message = query.message
        text = render("tg_remix_ask", origin.locale, n=button.index + 1, job=short_id(job.public_id),
                      prompt=prompt_with_lora_tags(job.request.prompt, job.request.loras))
        asked = await bot.send_message(message.chat.id, clip(text, MAX_TEXT),
                                       reply_markup=ForceReply(selective=True),
                                       **reply_kwargs(message.message_id, thread))
        self.remixes[(message.chat.id, asked.message_id)] = (int(origin.user_id), job.public_id, button.index)
        while len(self.remixes) > MAX_OPEN_REMIXES:
            self.remixes.popitem(last=False)

    async def remix_answer(self, message: Message, origin: Origin, args: str, context) -> None:
        """The new prompt for a Remix, as a reply to the bot's question: a strong variation with it."""
        _, job, index = self.remixes.pop((message.chat_id, message.reply_to_message.message_id))
        await self._queue(context.bot, message.chat_id, message.message_id, _thread(message), origin,
                          lambda o: self.service.submit_derived(job, "remix", o, index, prompt=message.text or ""))

    # --- errors ------------------------------------------------------------------------------------

    async def error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Anything a handler did not expect: logged in full, and the user hears something went wrong."""
        if isinstance(context.error, InvalidToken):  # its text (and traceback) quotes the token
            log.error("telegram: handling an update failed: %s", loggable(context.error))
        else:
            log.error("telegram: handling an update failed", exc_info=context.error)
        if isinstance(update, Update) and update.effective_message and update.effective_user:
            try:
                await reply(update.effective_message, render("tg_error", update.effective_user.language_code))
            except TelegramError:
                pass


def command_args(message: Message) -> str:
    """The text after "/command" (or "/command@bot"), newlines kept."""
    text = message.text or ""
    if not text.startswith("/"):
        return text.strip()
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


def _target_user(message: Message, args: str) -> tuple[int | None, str]:
    """(whom an admin command is about, the rest of its text): the author of the message it
    replies to, else a numeric user id as the first word. (None, ...) when neither is given."""
    replied = message.reply_to_message
    # In a forum topic every message "replies" to the topic's first message: that is no choice of user.
    topic_root = replied is not None and message.is_topic_message and replied.message_id == message.message_thread_id
    if replied is not None and not topic_root and replied.from_user is not None and not replied.from_user.is_bot:
        return replied.from_user.id, args
    first, _, rest = args.partition(" ")
    if first.isdigit():
        return int(first), rest.strip()
    return None, args


def _addressed_to_me(message: Message, chat: Chat, username: str) -> bool:
    """An unknown "/command" is ours to answer in a private chat, or when it names this bot."""
    first = (message.text or "").split(maxsplit=1)[0] if message.text else ""
    _, at, target = first.partition("@")
    if at:
        return target.lower() == (username or "").lower()
    return chat.type == ChatType.PRIVATE


def _thread(message: Message) -> int | None:
    return message.message_thread_id if message.is_topic_message else None


async def reply(message: Message, text: str) -> Message:
    return await message.get_bot().send_message(message.chat_id, clip(text, MAX_TEXT),
                                                 **reply_kwargs(message.message_id, _thread(message)))


class _RemixAnswer(filters.MessageFilter):
    """A message that answers an open Remix question, from the user who asked for the remix."""

    def __init__(self, remixes: OrderedDict[tuple[int, int], tuple[int, str, int]]) -> None:
        super().__init__(name="remix answer")
        self.remixes = remixes

    def filter(self, message: Message) -> bool:
        replied = message.reply_to_message
        if replied is None or message.from_user is None:
            return False
        waiting = self.remixes.get((message.chat_id, replied.message_id))
        return waiting is not None and waiting[0] == message.from_user.id
