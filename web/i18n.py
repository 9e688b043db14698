"""The web app's words in Japanese and English, and which language a request gets.

The ``lang`` cookie (set by the switch on every page) wins; else the first of
``ja``/``en`` in Accept-Language by quality; else Japanese (the mission's
first language).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LANGS", "TEXT", "pick_language"]

LANGS = ("ja", "en")

TEXT: Mapping[str, Mapping[str, str]] = {
    "ja": {
        "app": "carmesh", "home": "ホーム", "library": "図書館", "board": "掲示板",
        "call_nav": "通話",
        "people": "つながっている人", "people_nav": "近くの人", "bulletins": "緊急のお知らせ",
        "no_bulletins": "いま有効なお知らせはありません。", "new_bulletin": "新しいお知らせが届きました",
        "search": "検索", "search_placeholder": "例: 避難、給水", "results": "検索結果",
        "no_results": "見つかりませんでした。", "shelters": "避難所", "needs": "必要なもの",
        "vehicles": "電気を分けられる車", "capacity": "定員", "occupancy": "避難者",
        "open": "開設中", "closed": "閉鎖", "seats": "座席", "power": "提供できる電力",
        "battery": "電池残量", "outlets": "コンセント", "nothing": "まだ登録がありません。",
        "from": "発信", "until": "有効期限", "reachable": "通信できる端末",
        "hops": "経路コスト", "nobody": "まだ誰ともつながっていません。", "this_node": "この端末",
        "browser": "ブラウザ", "attached_to": "つないでいる車", "attached_here": "この車",
        "updated": "更新", "authors": "書いた人", "tags": "タグ", "back": "戻る",
        "not_found": "見つかりません", "error": "エラー", "language": "English",
        "safety": "安否", "safe": "無事", "needs_help": "助けが必要", "injured": "けが",
        "missing": "行方不明", "unknown": "不明", "links": "できること",
        "library_hint": "避難所、給水、医療などの情報を探す",
        "board_hint": "避難所・必要な物資・電気を分けられる車",
        "people_hint": "いまメッシュでつながっている端末",
        "deleted": "この文書は削除されました。", "too_many": "リクエストが多すぎます。少し待ってください。",
        "forbidden": "このページからの操作は受け付けられません。",
        "safety_title": "安否登録・人を探す", "safety_nav": "安否",
        "safety_hint": "「無事です」と登録する・家族や知人を探す",
        "safe_hint": "あなたの名前で「無事です」と登録する",
        "other_card_hint": "家族や近所の人の安否を登録する",
        "find_hint": "家族や知人の安否を名前で探す",
        "call_hint": "メッシュでつながっている人に電話する",
        "messages_hint": "暗号化したメッセージを送る・読む",
        "i_am_safe": "私は無事です", "your_name": "名前", "reading": "よみがな（任意）",
        "place": "いる場所（任意）", "note": "ひとこと（任意）", "register_safe": "無事を登録する",
        "your_key": "この端末の鍵", "key_making": "鍵を用意しています…",
        "no_ed25519": "このブラウザは Ed25519 の署名に対応していないため、登録できません。"
                      "新しい Chrome・Safari・Firefox を使うか、車の係員に登録を頼んでください。",
        "needs_js": "登録には JavaScript が必要です。",
        "signing": "署名して送っています…", "registered": "登録しました",
        "failed": "登録できませんでした", "find_person": "人を探す",
        "register_other": "ほかの人を登録する",
        "other_hint": "家族や近所の人の安否を登録できます。登録者としてこの端末の鍵が記録されます。",
        "their_name": "その人の名前", "status": "状態", "register_other_button": "この人を登録する",
        "find_placeholder": "名前・よみがな", "registered_by": "登録",
        "no_people": "登録されている人は見つかりませんでした。",
        "key_note": "登録はこの端末の鍵で署名され、あなた自身の名義で全ての車に届きます。",
        # messages (web/messages.py, static/leaf.js, static/messages.js)
        "messages_nav": "メッセージ", "new_message": "新しいメッセージ",
        "msg_you": "この端末の名前", "msg_attach": "この車につなぐ",
        "msg_attaching": "車につないでいます…", "msg_attached": "この車を通じて届きます",
        "msg_to": "宛先（名前またはID）", "msg_text": "メッセージ", "msg_send": "暗号化して送る",
        "msg_conversations": "会話", "msg_none": "まだメッセージはありません。",
        "msg_unread": "未読", "msg_sending": "送信中", "msg_sent": "車から送りました",
        "msg_delivered": "届きました", "msg_unreachable": "相手への経路がありません",
        "msg_unconfirmed": "届いたか確認できません", "msg_refused": "送れませんでした",
        "msg_failed": "相手が保存できませんでした", "msg_received": "受信",
        "msg_mail": "経路がないため、車から車へ運んでいます",
        "msg_note": "メッセージはこの端末で暗号化・署名されます。車は中身を読めません。",
        "msg_unsupported": "このブラウザは X25519・Ed25519 に対応していないため、メッセージを"
                           "使えません。新しい Chrome・Safari・Firefox を使ってください。",
    },
    "en": {
        "app": "carmesh", "home": "Home", "library": "Library", "board": "Board",
        "call_nav": "Call",
        "people": "People nearby", "people_nav": "People", "bulletins": "Emergency bulletins",
        "no_bulletins": "No bulletins in force.", "new_bulletin": "A new bulletin arrived",
        "search": "Search", "search_placeholder": "e.g. 避難, water", "results": "Results",
        "no_results": "Nothing found.", "shelters": "Shelters", "needs": "Needs",
        "vehicles": "Vehicles with power to share", "capacity": "capacity",
        "occupancy": "sheltering", "open": "open", "closed": "closed", "seats": "seats",
        "power": "power on offer", "battery": "battery", "outlets": "outlets",
        "nothing": "Nothing registered yet.", "from": "from", "until": "until",
        "reachable": "Reachable devices", "hops": "cost", "nobody": "Nobody is reachable yet.",
        "this_node": "this device", "browser": "browser", "attached_to": "through car",
        "attached_here": "this car", "updated": "updated", "authors": "authors", "tags": "tags",
        "back": "Back", "not_found": "Not found", "error": "Error", "language": "日本語",
        "safety": "safety", "safe": "safe", "needs_help": "needs help", "injured": "injured",
        "missing": "missing", "unknown": "unknown", "links": "What you can do",
        "library_hint": "Find shelters, water, medical help and more",
        "board_hint": "Shelters, needs, vehicles with power to share",
        "people_hint": "Devices reachable on the mesh now",
        "deleted": "This document was deleted.", "too_many": "Too many requests; wait a moment.",
        "forbidden": "This request is refused (not from this site).",
        "safety_title": "I am safe · find a person", "safety_nav": "Safety",
        "safety_hint": "Register that you are safe; find family and friends",
        "safe_hint": "Register in your own name that you are safe",
        "other_card_hint": "Register a family member or a neighbour",
        "find_hint": "Look up family and friends by name",
        "call_hint": "Call someone the mesh reaches",
        "messages_hint": "Send and read sealed messages",
        "i_am_safe": "I am safe", "your_name": "Name", "reading": "Reading in kana (optional)",
        "place": "Where you are (optional)", "note": "A note (optional)",
        "register_safe": "Register me as safe", "your_key": "This device's key",
        "key_making": "Preparing a key…",
        "no_ed25519": "This browser cannot sign with Ed25519, so it cannot register. Use a "
                      "current Chrome, Safari or Firefox, or ask the car's staff to register you.",
        "needs_js": "Registering needs JavaScript.",
        "signing": "Signing and sending…", "registered": "Registered",
        "failed": "Not registered", "find_person": "Find a person",
        "register_other": "Register someone else",
        "other_hint": "A family member or a neighbour: recorded with this device's key as "
                      "the one who registered them.",
        "their_name": "Their name", "status": "Status",
        "register_other_button": "Register this person",
        "find_placeholder": "name or reading", "registered_by": "registered by",
        "no_people": "Nobody by that name is registered.",
        "key_note": "Your registration is signed with this device's key and reaches every car "
                    "in your own name.",
        "messages_nav": "Messages", "new_message": "New message",
        "msg_you": "Your name on the mesh", "msg_attach": "Attach to this car",
        "msg_attaching": "Attaching to the car…", "msg_attached": "Reachable through this car",
        "msg_to": "To (name or id)", "msg_text": "Message", "msg_send": "Seal and send",
        "msg_conversations": "Conversations", "msg_none": "No messages yet.",
        "msg_unread": "unread", "msg_sending": "sending", "msg_sent": "sent by the car",
        "msg_delivered": "delivered", "msg_unreachable": "no route to them",
        "msg_unconfirmed": "not confirmed", "msg_refused": "refused",
        "msg_failed": "they could not store it", "msg_received": "received",
        "msg_mail": "no route: carried car to car as mail",
        "msg_note": "Messages are sealed and signed in this browser; the cars cannot read them.",
        "msg_unsupported": "This browser has no X25519 or Ed25519, so it cannot use messages. "
                           "Use a current Chrome, Safari or Firefox.",
    },
}


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    """``ja`` or ``en`` for a request (see the module docstring)."""
    if cookie in LANGS:
        assert cookie is not None
        return cookie
    best, best_q = "ja", -1.0
    for i, part in enumerate((accept_language or "")[:512].split(",")[:16]):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        if lang not in LANGS:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        if q > best_q or (q == best_q and i == 0):
            best, best_q = lang, q
    return best


# library corrections from the browser, a document's history, verified marks and pinned
# contacts (web/library_edit.py, /people); kept apart so that each part adds its own words
_EDIT_TEXT: Mapping[str, Mapping[str, str]] = {
    "ja": {
        "edit": "編集・訂正する", "history": "変更履歴", "edit_title": "文書を訂正する",
        "doc_title": "題名", "doc_body": "本文（Markdown）", "save_edit": "変更を確認する",
        "edit_note": "変更はこの端末の鍵で署名され、あなたの名義で全ての車に届きます。"
                     "車が変更の差分を作り、あなたはその内容を確認して署名します。",
        "edit_confirm": "次の変更に署名して公開しますか", "sign_publish": "署名して公開する",
        "cancel": "やめる", "chars_added": "文字追加", "chars_removed": "文字削除",
        "changes_n": "件の変更", "as_key": "署名する鍵", "published": "公開しました",
        "not_published": "公開できませんでした", "preparing": "車が変更を用意しています…",
        "no_change": "変更はありません。", "view_doc": "文書を見る",
        "when": "日時", "who": "誰が", "what": "内容", "created": "作成",
        "edited": "編集", "deleted_op": "削除", "restored": "復元", "compacted": "履歴を要約", "reverts": "取り消し",
        "browser_author": "ブラウザの利用者", "no_history": "履歴はありません。",
        "verified": "認証済み", "verified_note": "地域の販売店・自治体が登録した会員",
        "authority_mark": "公的機関", "pin": "連絡先に登録", "unpin": "登録を外す",
        "pinned": "登録済みの連絡先", "pin_label": "表示名", "my_contacts": "わたしの連絡先",
        "no_contacts": "まだ連絡先はありません。相手の「連絡先に登録」を押すと、その鍵で覚えます。",
        "same_name_warning": "同じ名前の連絡先とは別の鍵です（別人の可能性）",
        "fingerprint": "鍵の指紋", "contacts_note": "連絡先は鍵で覚えます（この端末の中だけに保存）。"
                                                  "同じ名前でも鍵が違えば別人として表示します。",
        "not_reachable_now": "いまは届きません",
    },
    "en": {
        "edit": "Edit or correct", "history": "History", "edit_title": "Correct a document",
        "doc_title": "Title", "doc_body": "Text (Markdown)", "save_edit": "Review the change",
        "edit_note": "Your change is signed with this device's key and reaches every car in "
                     "your own name. The car composes the change; you check it and sign.",
        "edit_confirm": "Sign and publish this change?", "sign_publish": "Sign and publish",
        "cancel": "Cancel", "chars_added": "characters added",
        "chars_removed": "characters removed", "changes_n": "change(s)",
        "as_key": "signing key", "published": "Published", "not_published": "Not published",
        "preparing": "The car is preparing the change…", "no_change": "Nothing changed.",
        "view_doc": "View the document", "when": "When", "who": "Who", "what": "What",
        "created": "created", "edited": "edited", "deleted_op": "deleted",
        "restored": "restored", "compacted": "history compacted", "reverts": "reverts", "browser_author": "a browser user",
        "no_history": "No history.", "verified": "verified",
        "verified_note": "a member enrolled by a dealer or the authority",
        "authority_mark": "authority", "pin": "Pin as contact", "unpin": "Unpin",
        "pinned": "pinned contact", "pin_label": "label", "my_contacts": "My contacts",
        "no_contacts": "No contacts yet. Tap \u201cPin as contact\u201d beside someone to "
                       "remember them by their key.",
        "same_name_warning": "not your contact of this name: a different key (maybe someone "
                             "else)",
        "fingerprint": "key fingerprint",
        "contacts_note": "Contacts are remembered by key (kept on this device only). The same "
                         "name with another key is shown as someone else.",
        "not_reachable_now": "not reachable now",
    },
}
TEXT = {lang: {**words, **_EDIT_TEXT[lang]} for lang, words in TEXT.items()}
