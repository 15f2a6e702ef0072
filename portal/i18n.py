"""The portal's words in Japanese (the default: the subscribers are in Tokyo) and English.

A page's language comes from ``?lang=`` (``ja`` | ``en``), then the ``lang`` cookie, then
Japanese; every link the templates build keeps it (``url``)."""
from __future__ import annotations

LANGS = ("ja", "en")
DEFAULT_LANG = "ja"

MESSAGES = {
    "ja": {
        "site": "タップフォロー", "near": "近くの今", "alerts": "あなたへのお知らせ", "friends": "友だち",
        "settings": "設定", "signin": "ログイン", "signout": "ログアウト", "search": "検索",
        "keyword": "キーワード", "no_location": "現在地がわかりません（最近の位置情報がありません）。",
        "no_tweets": "このあたりの最近のツイートはありません。", "no_alerts": "お知らせはありません。",
        "no_friends": "まだ友だちはいません。端末をタッチして友だちになりましょう。",
        "happening": "できごと", "area": "エリア", "distance": "距離", "since": "から",
        "alerts_on": "お知らせを受け取る", "stats_leave": "統計から外れる（マーケティング統計に一切使われません）",
        "save": "保存", "saved": "保存しました。1分以内に反映されます。",
        "signin_how": "スマートフォンのキーでログインします。端末で次を実行し、表示されたリンクを開いてください：",
        "signin_confirm": "このアカウントでログインしますか？", "signin_failed": "ログインできませんでした",
        "forbidden": "このページは見られません。", "not_found": "見つかりません。",
        "text_unavailable": "（本文は表示できません）", "m_map": "地図", "m_series": "時系列", "m_ledger": "プライバシー台帳",
        "m_about": "ノイズと信頼区間について", "metric": "指標", "hour": "時間帯", "show": "表示",
        "spans_zero": "斜線：95%信頼区間がゼロをまたぐ（ゼロと区別できない）セル",
        "download": "ダウンロード", "cell": "セル", "value": "値", "ci": "95%区間", "budget": "1人1日あたりの予算",
        "spent": "1人あたりの使用ε", "day": "日付", "no_release": "統計はまだ公開されていません。", "lang_other": "English",
        "updated": "更新",
    },
    "en": {
        "site": "tapfollow", "near": "Near you now", "alerts": "Your alerts", "friends": "Friends",
        "settings": "Settings", "signin": "Sign in", "signout": "Sign out", "search": "Search",
        "keyword": "keyword", "no_location": "We do not know where you are (no recent location).",
        "no_tweets": "No recent tweets around here.", "no_alerts": "No alerts.",
        "no_friends": "No friends yet. Touch phones to follow each other.",
        "happening": "happening", "area": "area", "distance": "distance", "since": "since",
        "alerts_on": "Send me local alerts", "stats_leave": "Leave the statistics (never used in any marketing statistic)",
        "save": "Save", "saved": "Saved. It takes effect within a minute.",
        "signin_how": "Sign in with your phone's key: run this on the phone and open the link it prints:",
        "signin_confirm": "Sign in as this account?", "signin_failed": "Sign-in failed",
        "forbidden": "You cannot see this page.", "not_found": "Not found.",
        "text_unavailable": "(text not available)", "m_map": "Map", "m_series": "Time series", "m_ledger": "Privacy ledger",
        "m_about": "What the noise and intervals mean", "metric": "metric", "hour": "hour", "show": "Show",
        "spans_zero": "Hatched: the cell's 95% interval spans zero (not distinguishable from zero)",
        "download": "Download", "cell": "cell", "value": "value", "ci": "95% interval", "budget": "budget per user-day",
        "spent": "ε spent per user", "day": "day", "no_release": "No statistics released yet.", "lang_other": "日本語",
        "updated": "updated",
    },
}
assert MESSAGES["ja"].keys() == MESSAGES["en"].keys()


def pick_lang(query_lang: str | None, cookie_lang: str | None) -> str:
    for lang in (query_lang, cookie_lang):
        if lang in LANGS:
            return lang
    return DEFAULT_LANG
