"""What a follow-up turn says about the answer before it: a re-ask, a dissatisfaction cue, or moving on.

A conversation's new user turn follows an assistant answer, which followed the user's previous
turn. Three things can be read from the new turn:

    reask         the user asks the same thing again: the new turn is semantically close to the
                  previous user turn (cosine of the shared sentence embedding >= a threshold), or,
                  without an encoder, the same text once case, punctuation and spacing are ignored
    dissatisfied  the user says the answer was bad: a cue such as "that's wrong", "try again",
                  "das ist falsch", "не работает", "不对", "違います" (phrases below, in 26
                  languages: en, de, fr, es, it, pt, nl, ro, el, ru, uk, pl, cs, tr, sv, da, no,
                  fi, he, ar, hi, id, vi, zh, ja, ko)
    moved_on      neither: probably, not certainly, the answer served its purpose

`follow_up(ctx)` finds the three texts in a request (None when the request is not a follow-up:
its last message is not a user turn right after an assistant answer). `classify` decides the
event; a cue wins over a re-ask (it is the surer evidence). Both the `reask` and `dissatisfied`
signals (rules may escalate such turns) and the gateway's implicit feedback
(`gateway.implicit`) read these functions, so they always agree.

The cues are exemplar phrases written for this module, found in the case-folded, accent-folded
turn (its first `CUE_SCAN_CHARS` characters): on word boundaries, except Korean (a word start:
endings attach to the word) and Chinese and Japanese (anywhere: no spaces between words).
`NOT_CUES` are look-alikes that contain a cue but say nothing bad about the answer ("I'll try again
tomorrow", "o que está errado no meu código", "对不对"); a cue inside one is skipped. All languages
share one pattern per script, built as a prefix tree. `tests/data/dissatisfaction_cues.jsonl` is a
labelled set (346 turns written for this project, cues and near-misses in all 26 languages) that
`tests/test_implicit_feedback.py` measures precision and recall on: 0.995 and 1.0 (one Finnish
near-miss, "why doesn't my printer work", is taken for a cue) — optimistic, since the same hand
wrote the phrases after the turns. The re-ask threshold (`DEFAULT_REASK_THRESHOLD`) was chosen with
`python -m benchmarks.reask` (see README, "Implicit feedback").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from sigroute.signals.base import Signal, SignalResult
from sigroute.signals.heuristics import _needs_boundary

__all__ = ["Reask", "Dissatisfied", "FollowUp", "follow_up", "normalized", "dissatisfaction_cue", "classify", "CUES",
           "NOT_CUES", "WORD_START_LANGUAGES", "NO_WORD_BOUNDARY_LANGUAGES", "CUE_SCAN_CHARS",
           "DEFAULT_REASK_THRESHOLD"]

# Chosen with benchmarks/reask.py. On 2,000 labelled question pairs whose non-duplicates are hard
# negatives (same topic): at 0.85 precision 0.72, recall 0.63; at 0.80 0.66 / 0.76; at 0.92 0.81 / 0.34
# (F1 only grows towards 0.70: 0.58 / 0.94). On 40 conversation follow-ups written for this project
# (tests/data/reask_followups.jsonl): at 0.85 precision 1.0, recall 0.85; at 0.80 1.0 / 0.95. 0.85
# leans to precision (a false re-ask credits a good answer as bad). See README "Implicit feedback".
DEFAULT_REASK_THRESHOLD = 0.85

# Dissatisfaction cues, by language (ISO 639-1 codes as the `language` signal reports them: "no" is
# Norwegian). Written as a user types them: phrases and turns are folded the same way before matching.
# A phrase two languages share ("virker ikke": Danish and Norwegian) reports the first.
CUES: dict[str, tuple[str, ...]] = {
    "en": ("that's wrong", "thats wrong", "that is wrong", "this is wrong", "that's incorrect", "that is incorrect",
           "this is incorrect", "that's not right", "that is not right", "thats not right", "not correct",
           "that's not it", "that is not it", "not what i asked", "not what i meant", "not what i wanted", "try again",
           "wrong answer", "you're wrong", "you are wrong", "that's not true", "that is not true", "doesn't work",
           "does not work", "didn't work", "did not work", "makes no sense", "doesn't make sense",
           "does not make sense", "useless answer", "not helpful", "unhelpful", "you misunderstood", "that's false",
           "that is false", "incorrect answer", "still wrong", "nope"),
    "de": ("das ist falsch", "das stimmt nicht", "stimmt nicht", "falsche antwort", "nochmal versuchen",
           "versuch es nochmal", "versuche es noch einmal", "noch einmal versuchen", "das ist nicht richtig",
           "nicht richtig", "das war nicht gemeint", "nicht das was ich", "nicht was ich", "das hilft nicht",
           "funktioniert nicht", "ergibt keinen sinn", "macht keinen sinn", "du liegst falsch", "sie liegen falsch",
           "immer noch falsch", "leider falsch"),
    "fr": ("c'est faux", "c est faux", "ce n'est pas ca", "ce n'est pas correct", "ce n'est pas juste", "pas correct",
           "mauvaise reponse", "reessaie", "reessayez", "essaie encore", "essayez encore", "ce n'est pas ce que",
           "ca ne marche pas", "ca ne fonctionne pas", "ne fonctionne pas", "tu te trompes", "vous vous trompez",
           "ca n'a pas de sens", "toujours faux", "inexact"),
    "es": ("eso esta mal", "esta mal", "es incorrecto", "eso es incorrecto", "no es correcto", "no es cierto",
           "respuesta incorrecta", "intentalo de nuevo", "intenta de nuevo", "vuelve a intentarlo", "prueba otra vez",
           "no es eso", "no es lo que", "no funciona", "te equivocas", "se equivoca", "no tiene sentido", "sigue mal",
           "sigue siendo incorrecto"),
    "it": ("è sbagliato", "è tutto sbagliato", "ancora sbagliato", "hai sbagliato", "risposta sbagliata",
           "risposta errata", "non è corretto", "non è giusto", "non è esatto", "non è vero", "riprova",
           "prova di nuovo", "prova ancora", "ritenta", "non funziona", "non è quello che", "non è ciò che",
           "ti sbagli", "si sbaglia", "non ha senso", "hai frainteso", "non hai capito"),
    "pt": ("está errado", "isso está errado", "está incorreto", "não está correto", "não está certo", "resposta errada",
           "resposta incorreta", "continua errado", "ainda está errado", "tá errado", "tente novamente",
           "tente de novo", "tenta de novo", "tenta novamente", "não funciona", "não deu certo", "não é isso",
           "não foi isso que", "não é o que eu", "você está errado", "você se enganou", "não é verdade",
           "não faz sentido", "você entendeu errado"),
    "nl": ("dat is fout", "dit is fout", "nog steeds fout", "dat klopt niet", "klopt niet", "dat is niet juist",
           "dat is onjuist", "dat is niet correct", "verkeerd antwoord", "fout antwoord", "probeer het opnieuw",
           "probeer opnieuw", "probeer het nog eens", "probeer nog eens", "werkt niet", "niet wat ik",
           "slaat nergens op", "je hebt het mis", "u heeft het mis", "je hebt me verkeerd begrepen"),
    "ru": ("это неправильно", "неправильно", "это неверно", "неверно", "неправильный ответ", "неверный ответ",
           "ответ неверный", "ответ неправильный", "это не так", "это не то", "не то, что я", "не то что я",
           "я не об этом спрашивал", "я не это спрашивал", "попробуй ещё раз", "попробуйте ещё раз", "попробуй снова",
           "попробуйте снова", "не работает", "не помогло", "ты ошибаешься", "вы ошибаетесь", "не имеет смысла",
           "это бессмыслица", "это чушь", "полная чушь", "какая-то ерунда", "ты не понял", "вы не поняли",
           "ты неправильно понял"),
    "uk": ("це неправильно", "неправильно", "це неправда", "неправильна відповідь", "невірна відповідь",
           "відповідь неправильна", "це не те", "не те, що я", "не те що я", "спробуй ще раз", "спробуйте ще раз",
           "спробуй знову", "спробуйте знову", "не працює", "не допомогло", "ти помиляєшся", "ви помиляєтеся",
           "не має сенсу", "ти не зрозумів", "ви не зрозуміли", "маячня"),
    "pl": ("to nieprawda", "nieprawda", "to źle", "to jest źle", "nadal źle", "dalej źle", "wciąż źle", "znowu źle",
           "zła odpowiedź", "błędna odpowiedź", "to nie jest poprawne", "to niepoprawne", "nie o to pytałem",
           "nie o to pytałam", "nie o to mi chodziło", "spróbuj jeszcze raz", "spróbuj ponownie", "nie działa",
           "mylisz się", "pan się myli", "pani się myli", "to nie ma sensu", "to bez sensu", "źle mnie zrozumiałeś",
           "źle zrozumiałeś", "nie zrozumiałeś"),
    "cs": ("to je špatně", "je to špatně", "pořád špatně", "stále špatně", "zase špatně", "to není správně",
           "není to správně", "špatná odpověď", "chybná odpověď", "to není pravda", "zkus to znovu",
           "zkus to ještě jednou", "zkuste to znovu", "zkus znovu", "nefunguje", "mýlíš se", "mýlíte se",
           "to nedává smysl", "nedává to smysl", "na to jsem se neptal", "na to jsem se neptala",
           "špatně jsi to pochopil", "nepochopil jsi"),
    "tr": ("bu yanlış", "yanlış cevap", "yanlış yanıt", "cevap yanlış", "hâlâ yanlış", "hala yanlış", "yine yanlış",
           "bu doğru değil", "doğru değil", "tekrar dene", "tekrar deneyin", "yeniden dene", "bir daha dene",
           "çalışmıyor", "hâlâ çalışmıyor", "yanılıyorsun", "yanılıyorsunuz", "mantıklı değil", "bu saçma",
           "sorduğum bu değil", "bunu sormadım", "yanlış anladın", "yanlış anladınız", "bu olmadı"),
    "sv": ("det är fel", "det där är fel", "det här är fel", "fortfarande fel", "fel svar", "det är felaktigt",
           "det är inte rätt", "du har fel", "ni har fel", "försök igen", "försök en gång till", "fungerar inte",
           "funkar inte", "det stämmer inte", "stämmer inte", "inte det jag frågade", "inte vad jag frågade",
           "det ger ingen mening", "du missförstod", "du har missförstått"),
    "da": ("det er forkert", "det er ikke rigtigt", "det er ikke korrekt", "forkert svar", "stadig forkert",
           "du tager fejl", "prøv igen", "prøv en gang til", "virker ikke", "det passer ikke", "det giver ingen mening",
           "giver ingen mening", "ikke det jeg spurgte", "ikke det, jeg spurgte", "du misforstod",
           "du har misforstået"),
    "no": ("det er feil", "fortsatt feil", "feil svar", "det er ikke riktig", "du tar feil", "dere tar feil",
           "prøv igjen", "prøv en gang til", "fungerer ikke", "virker ikke", "det stemmer ikke", "stemmer ikke",
           "det gir ingen mening", "gir ingen mening", "ikke det jeg spurte", "du misforsto"),
    "fi": ("se on väärin", "tuo on väärin", "tämä on väärin", "taas väärin", "edelleen väärin", "yhä väärin",
           "väärä vastaus", "vastaus on väärin", "yritä uudelleen", "yritä uudestaan", "yritä vielä",
           "kokeile uudelleen", "kokeile uudestaan", "ei toimi", "ei vieläkään toimi", "olet väärässä",
           "ei pidä paikkaansa", "ei ole mitään järkeä", "ei ole järkeä", "en kysynyt sitä", "en kysynyt tätä",
           "en tarkoittanut", "ymmärsit väärin"),
    "zh": ("不对", "不對", "你错了", "你錯了", "答案错了", "答案錯了", "回答错了", "回答錯了", "又错了", "又錯了", "还是错", "還是錯", "不是我问的", "不是我問的",
           "我问的不是", "我問的不是", "不是我想要的", "再试一次", "再試一次", "重新回答", "运行不了", "運行不了", "跑不通", "无法运行", "無法運行", "不起作用", "说不通",
           "說不通", "毫无意义", "毫無意義", "胡说", "胡說", "理解错了", "理解錯了", "你误会了", "你誤會了", "你搞错了", "你搞錯了"),
    "ja": ("違います", "違うよ", "違うって", "違うでしょ", "全然違う", "それは違う", "そうじゃない", "そういうことじゃない", "そういうことではない", "間違っています", "間違ってます",
           "間違ってる", "間違いです", "間違いだよ", "不正解", "正しくない", "やり直して", "もう一度やって", "もう一回やって", "動きません", "動かない", "うまくいかない",
           "うまくいきません", "意味不明", "意味が通じない", "答えになっていない", "答えになってない"),
    "ko": ("틀렸", "틀린 답", "잘못된 답", "정답이 아니", "잘못 이해하셨", "잘못 이해하신", "질문을 잘못 이해", "다시 해 주세요", "다시 해주세요", "다시 해 줘", "다시 해줘",
           "다시 시도해", "다시 답해", "작동하지 않", "작동 안 해", "작동이 안 돼", "작동이 안 되", "아직도 안 돼", "아직도 안 되", "여전히 안 돼", "여전히 안 되",
           "말이 안 돼", "말이 안 되", "말도 안 돼", "말도 안 되", "그게 아니", "그런 뜻이 아니", "물어본 게 아니"),
    "ar": ("هذا خطأ", "هذا خاطئ", "هذا غلط", "إجابة خاطئة", "الإجابة خاطئة", "الإجابة خطأ", "ما زال خطأ", "مازال خطأ",
           "أنت مخطئ", "أنت مخطئة", "غير صحيح", "ليس صحيحا", "ليس صحيح", "حاول مرة أخرى", "حاول مجددا", "حاول من جديد",
           "جرب مرة أخرى", "لا يعمل", "لا يشتغل", "لم ينجح", "ليس ما سألت", "ليس ما طلبت", "لم أسأل عن هذا",
           "لا معنى له", "لا معنى لهذا", "ليس له معنى", "لم تفهمني", "لم تفهم سؤالي", "فهمت خطأ"),
    "hi": ("यह गलत है", "ये गलत है", "गलत है", "गलत जवाब", "जवाब गलत", "गलत उत्तर", "उत्तर गलत", "आप गलत हैं",
           "तुम गलत हो", "यह सही नहीं है", "सही नहीं है", "फिर से कोशिश करो", "फिर से कोशिश करें", "दोबारा कोशिश करो",
           "दोबारा कोशिश करें", "काम नहीं कर रहा", "काम नहीं कर रही", "काम नहीं करता", "अब भी काम नहीं",
           "कोई मतलब नहीं", "मतलब नहीं बनता", "मैंने यह नहीं पूछा", "मैंने ये नहीं पूछा", "मेरा सवाल यह नहीं था",
           "आपने गलत समझा", "तुमने गलत समझा"),
    "ro": ("este greșit", "e greșit", "e greșită", "tot greșit", "încă greșit", "răspuns greșit", "răspunsul e greșit",
           "nu este corect", "nu e corect", "nu e adevărat", "încearcă din nou", "încearcă încă o dată",
           "mai încearcă", "nu funcționează", "tot nu funcționează", "te înșeli", "vă înșelați", "nu are sens",
           "nu are niciun sens", "nu asta am întrebat", "nu la asta mă refeream", "nu ai înțeles"),
    "el": ("αυτό είναι λάθος", "είναι λάθος", "λάθος απάντηση", "πάλι λάθος", "ακόμα λάθος", "δεν είναι σωστό",
           "δεν ισχύει", "δοκίμασε ξανά", "δοκιμάστε ξανά", "ξαναπροσπάθησε", "δεν λειτουργεί", "δε λειτουργεί",
           "δεν δουλεύει", "δε δουλεύει", "κάνεις λάθος", "κάνετε λάθος", "δεν έχει νόημα", "δεν βγάζει νόημα",
           "δεν είναι αυτό που ρώτησα", "δεν ρώτησα αυτό", "δεν κατάλαβες"),
    "he": ("זה לא נכון", "זה שגוי", "תשובה שגויה", "תשובה לא נכונה", "עדיין לא נכון", "אתה טועה", "את טועה",
           "תנסה שוב", "נסה שוב", "תנסי שוב", "לא עובד", "עדיין לא עובד", "זה לא מה ששאלתי", "לא מה ששאלתי",
           "זה לא הגיוני", "אין לזה היגיון", "לא הבנת"),
    "id": ("itu salah", "ini salah", "masih salah", "jawaban salah", "jawabannya salah", "kamu salah", "anda salah",
           "itu keliru", "kamu keliru", "anda keliru", "itu tidak benar", "tidak benar", "coba lagi", "coba ulang",
           "tidak berfungsi", "tidak jalan", "nggak jalan", "gak jalan", "tidak bekerja", "masih error",
           "bukan itu yang saya", "bukan itu yang aku", "bukan itu maksud saya", "bukan yang saya tanyakan",
           "tidak masuk akal", "nggak masuk akal", "gak masuk akal", "salah paham"),
    "vi": ("sai rồi", "vẫn sai", "lại sai", "câu trả lời sai", "trả lời sai", "không đúng", "bạn nhầm rồi", "nhầm rồi",
           "thử lại đi", "hãy thử lại", "thử lại xem", "làm lại đi", "không chạy", "vẫn không chạy", "không hoạt động",
           "không phải cái tôi hỏi", "không phải điều tôi", "tôi không hỏi", "chẳng có nghĩa gì", "không có nghĩa gì",
           "không hợp lý", "vô lý"),
}

# Phrases that contain a cue but do not say the answer was bad: a question about what is wrong, a
# yes-no question or a negation built around the cue, the user's own "I'll try again". A cue found
# inside one of these is skipped (the longer phrase is matched first where both start).
NOT_CUES: dict[str, tuple[str, ...]] = {
    "en": ("i'll try again", "i will try again", "let me try again", "if that doesn't work", "if it doesn't work",
           "if this doesn't work", "in case it doesn't work"),
    "de": ("was stimmt nicht", "ist das nicht richtig", "ist es nicht richtig"),
    "es": ("no está mal",),
    "it": ("cos'è sbagliato", "cosa è sbagliato", "non è sbagliato"),
    "pt": ("o que está errado", "não está errado"),
    "nl": ("wat klopt niet",),
    "ru": ("что неправильно", "что я делаю неправильно", "делаю неправильно", "неправильно ли", "верно или неверно",
           "правильно или неправильно", "это не то же самое"),
    "uk": ("що неправильно", "роблю неправильно", "чи неправильно", "правильно чи неправильно", "це не те саме"),
    "tr": ("doğru değil mi",),
    "sv": ("stämmer inte det",),
    "da": ("virker ikke som", "virker ikke til"),   # "virker" is also "seems"
    "no": ("stemmer ikke det", "virker ikke som"),
    "fi": ("jos se ei toimi", "jos ei toimi"),
    "zh": ("对不对", "對不對", "不对称", "不對稱", "不对外", "不對外", "哪里不对", "哪裡不對", "有什么不对", "有什麼不對",
           "我再试一次", "我再試一次"),
    "ja": ("違いますか", "どこが間違", "何が間違", "間違っていますか", "間違ってますか", "正しくないですか",
           "そうじゃないですか", "そうじゃないの", "動かない場合", "動かないとき", "うまくいかない場合",
           "うまくいかない時", "うまくいかないとき"),
    "ko": ("틀렸나", "틀렸는지", "틀렸을", "뭐가 틀렸", "어디가 틀렸", "그게 아니면", "작동하지 않으면"),
    "ar": ("إذا لم ينجح",),
    "hi": ("क्या गलत है", "क्या यह सही नहीं है"),
    "ro": ("ce este greșit", "ce e greșit", "nu e greșit", "nu este greșit"),
    "el": ("τι είναι λάθος", "δεν είναι λάθος", "είναι λάθος να"),
    "id": ("saya coba lagi", "aku coba lagi", "akan coba lagi", "nanti coba lagi", "apakah tidak benar"),
    "vi": ("đúng hay không đúng",),
}

# How a language's phrases are found in the folded turn:
#   on word boundaries (the default): the phrase is neither preceded nor followed by a letter or digit;
#   WORD_START_LANGUAGES: only its start must be a word start: Korean attaches endings and particles to
#       the word ("틀렸" finds 틀렸어요 and 틀렸습니다), so its phrases are stems;
#   NO_WORD_BOUNDARY_LANGUAGES: anywhere, as a substring: Chinese and Japanese put no spaces between
#       words; their phrases are longer and NOT_CUES holds the look-alikes ("对不对", "is it right?").
WORD_START_LANGUAGES = frozenset({"ko"})
NO_WORD_BOUNDARY_LANGUAGES = frozenset({"zh", "ja"})

class _FoldTable(dict):
    """The `str.translate` table `_fold` applies after NFKD: combining marks to nothing, other
    characters to themselves, each looked up once (at most `_FOLD_TABLE_SIZE` are remembered)."""

    def __missing__(self, codepoint: int) -> int | None:
        value = None if unicodedata.combining(chr(codepoint)) else codepoint
        if len(self) < _FOLD_TABLE_SIZE:
            self[codepoint] = value
        return value


_FOLD_TABLE_SIZE = 1 << 16
# Letters that look accented but have no decomposition: folded as a user without the key types them
# (and Arabic's tatweel, a stretching stroke, dropped). Kana voicing marks are letters, not accents
# (ため and だめ are different words): kept.
_FOLD_TABLE = _FoldTable(str.maketrans({"ı": "i", "ł": "l", "Ł": "l", "đ": "d", "Đ": "d", "ø": "o", "Ø": "o",
                                        "ى": "ي", "\u0640": None, "\u2019": "'", "\u2018": "'",
                                        "\u3099": "\u3099", "\u309a": "\u309a"}))


def _fold(text: str) -> str:
    """Case-folded, accents and other combining marks removed (Latin, Cyrillic, Arabic harakat and
    hamza, Devanagari nukta and virama: the same on both sides, so matches hold), kana voicing marks
    kept and recomposed, Hangul recomposed into syllables, look-alike letters mapped (ı→i, ł→l, đ→d,
    ø→o, ى→ي), curly apostrophes straightened, spaces collapsed."""
    if text.isascii():   # nothing to decompose or map: the common case, many times faster
        return " ".join(text.casefold().split())
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFKD", text).translate(_FOLD_TABLE))
    return " ".join(text.casefold().split())


def _boundaries(language: str) -> tuple[bool, bool]:
    """(a word start before, a word end after) for a language's phrases."""
    if language in NO_WORD_BOUNDARY_LANGUAGES:
        return False, False
    return True, language not in WORD_START_LANGUAGES


def _trie(phrases: Iterable[str], start: bool, end: bool) -> list[str]:
    """Alternatives (one per first character) of a regular expression that finds the longest of
    `phrases` (folded) at a position; `start`/`end` ask for a word boundary before/after it. Shared
    prefixes are written once, so a position costs a few character tests, not one per phrase."""
    root: dict = {}
    for phrase in phrases:
        node = root
        for ch in phrase:
            node = node.setdefault(ch, {})
        node[""] = {}

    def body(node: dict) -> str:
        branches = [re.escape(ch) + body(child) for ch, child in sorted(node.items()) if ch]
        if "" in node:   # a phrase ends here: longer ones first, then this one
            branches.append(r"(?!\w)" if end else "")
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    # the word start is tested after the first character: (?<!\w.) looks at the one before it
    return [re.escape(ch) + (r"(?<!\w.)" if start else "") + body(child) for ch, child in sorted(root.items())]


def _script(ch: str) -> str:
    """The script a character belongs to, by its Unicode name's first word (LATIN, CYRILLIC, CJK, …)."""
    return unicodedata.name(ch, "?").split(" ", 1)[0]


def _pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """A policy's extra cues, with the `keyword` signal's boundaries: a phrase must not continue a
    word where its own edge is a word character outside the scripts written without spaces (Chinese,
    Japanese, Korean, Thai, …: "不靠谱" is found inside "这个回答不靠谱啊")."""
    by_rule: dict[tuple[bool, bool], set[str]] = {}
    for phrase in {_fold(p) for p in phrases}:
        by_rule.setdefault((_needs_boundary(phrase[0]), _needs_boundary(phrase[-1])), set()).add(phrase)
    return re.compile("|".join(a for rule, group in by_rule.items() for a in _trie(group, *rule)), re.DOTALL)


def _cue_table() -> tuple[list[tuple[bool, re.Pattern[str], re.Pattern[str]]], dict[str, str], frozenset[str]]:
    """The patterns for every language's cues and not-cues, one per script of a phrase's first
    character, each with whether its first characters are all ASCII and a pattern for them (a turn
    with none of them is not searched); the language of each folded cue (the first language listing
    it); the folded not-cues."""
    language_of: dict[str, str] = {}
    for language, phrases in CUES.items():
        for phrase in phrases:
            language_of.setdefault(_fold(phrase), language)
    not_cues = frozenset(_fold(p) for phrases in NOT_CUES.values() for p in phrases)
    by_script: dict[str, list[str]] = {}
    for rule in ((True, True), (True, False), (False, False)):
        folded = {_fold(p) for language in CUES.keys() | NOT_CUES.keys() if _boundaries(language) == rule
                  for p in CUES.get(language, ()) + NOT_CUES.get(language, ())}
        for script in sorted({_script(p[0]) for p in folded}):
            by_script.setdefault(script, []).extend(_trie({p for p in folded if _script(p[0]) == script}, *rule))
    groups = []
    for alternatives in by_script.values():
        # each alternative starts with its (escaped) first character
        firsts = {re.escape(a[0]) if a[0] != "\\" else a[:2] for a in alternatives}
        groups.append((all(a[0].isascii() for a in alternatives), re.compile("[" + "".join(sorted(firsts)) + "]"),
                       re.compile("|".join(alternatives), re.DOTALL)))
    return groups, language_of, not_cues


_CUE_GROUPS, _CUE_LANGUAGE, _NOT_CUES = _cue_table()
CUE_SCAN_CHARS = 2000   # a cue is said early: only the start of a long turn is read


def _first_cue(pattern: re.Pattern[str], folded: str, position: int) -> re.Match[str] | None:
    """The first match of `pattern` from `position` on that is a cue (a not-cue is stepped over)."""
    while (found := pattern.search(folded, position)) is not None:
        if found.group(0) not in _NOT_CUES:
            return found
        position = found.end()
    return None


def dissatisfaction_cue(text: str, extra: re.Pattern[str] | None = None) -> tuple[str, str] | None:
    """(language, the cue as found) for the first dissatisfaction cue in `text`, else None.
    `extra` is a policy's own cue pattern (language "policy")."""
    folded = _fold(text[:CUE_SCAN_CHARS])
    if not folded:
        return None
    if extra is not None:
        found = extra.search(folded)
        if found:
            return "policy", found.group(0)
    ascii_only = folded.isascii()
    first: re.Match[str] | None = None
    for ascii_starts, starts, pattern in _CUE_GROUPS:
        if ascii_only and not ascii_starts:
            continue
        candidate = starts.search(folded)
        if candidate is not None and (first is None or candidate.start() < first.start()):
            found = _first_cue(pattern, folded, candidate.start())
            if found is not None and (first is None or found.start() < first.start()):
                first = found
    return None if first is None else (_CUE_LANGUAGE[first.group(0)], first.group(0))


def cue_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern for a policy's extra cue phrases (None for none)."""
    phrases = [p for p in phrases if _fold(p)]
    return _pattern(phrases) if phrases else None


_PUNCTUATION = re.compile(r"[^\w\s]")


def normalized(text: str) -> str:
    """Text for comparing two turns without an encoder: folded, punctuation dropped."""
    return " ".join(_PUNCTUATION.sub(" ", _fold(text)).split())


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A user turn right after an assistant answer, with the user turn that answer answered."""

    answer: str           # the assistant's answer the new turn follows
    turn: str             # the new (last) user turn
    previous: str | None  # the user turn before the answer (None when the conversation has none)


def follow_up(ctx) -> FollowUp | None:
    """The follow-up in a request (a `signals.context.RequestContext`), or None when its last
    message is not a user turn that directly follows an assistant answer with text."""
    messages = ctx.messages
    if len(messages) < 2 or messages[-1].role != "user" or messages[-2].role != "assistant":
        return None
    answer, turn = messages[-2].text, messages[-1].text
    if not answer.strip() or not turn.strip():
        return None
    previous = next((m.text for m in reversed(messages[:-2]) if m.role == "user"), None)
    return FollowUp(answer=answer, turn=turn, previous=previous)


def classify(follow: FollowUp, similarity: float | None, threshold: float,
             extra_cues: re.Pattern[str] | None = None) -> tuple[str, dict]:
    """The event ("dissatisfied", "reask" or "moved_on") and why. `similarity` is the cosine of the
    new and the previous user turn's embeddings; None without an encoder (then a re-ask is the same
    normalized text)."""
    cue = dissatisfaction_cue(follow.turn, extra_cues)
    if cue is not None:
        return "dissatisfied", {"language": cue[0], "cue": cue[1]}
    if follow.previous is not None:
        if similarity is None:
            if normalized(follow.turn) and normalized(follow.turn) == normalized(follow.previous):
                return "reask", {"by": "text"}
        elif similarity >= threshold:
            return "reask", {"by": "embedding", "similarity": round(float(similarity), 4)}
    details: dict = {}
    if similarity is not None:
        details["similarity"] = round(float(similarity), 4)
    return "moved_on", details


# --------------------------------------------------------------------------------------------
# the signals rules read


class Reask(Signal):
    """`reask`: the last user turn asks the previous one again, right after an assistant answer.

    value is {"similarity"} (cosine of the two turns); confidence is the similarity when matched.
    Needs the encoder (a declared `reask` signal loads it).
    """

    type = "reask"
    needs_embedding = True

    def embedding_texts(self, ctx) -> tuple[str, ...]:
        follow = follow_up(ctx)
        if follow is None or follow.previous is None:
            return ()
        return (follow.turn, follow.previous)

    def evaluate(self, ctx) -> SignalResult:
        follow = follow_up(ctx)
        if follow is None or follow.previous is None:
            return SignalResult(False, 0.0, {"reason": "not a follow-up turn"})
        similarity = float(ctx.vector(follow.turn) @ ctx.vector(follow.previous))
        matched = similarity >= self.config.threshold
        return SignalResult(matched, max(0.0, min(1.0, similarity)), {"similarity": round(similarity, 4)})


class Dissatisfied(Signal):
    """`dissatisfied`: the last user turn, right after an assistant answer, says that answer was
    wrong ("that's wrong", "try again", "das ist falsch", …). value is {"language", "cue"}."""

    type = "dissatisfied"

    def __init__(self, name: str, config):
        super().__init__(name, config)
        self._extra = cue_pattern(config.extra_cues)

    def evaluate(self, ctx) -> SignalResult:
        follow = follow_up(ctx)
        if follow is None:
            return SignalResult(False, 0.0, {"reason": "not a follow-up turn"})
        cue = dissatisfaction_cue(follow.turn, self._extra)
        if cue is None:
            return SignalResult(False, 0.0, None)
        return SignalResult(True, 1.0, {"language": cue[0], "cue": cue[1]})
