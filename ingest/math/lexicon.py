"""The English word lists behind the token features (ours, not the paper's): punctuation kinds,
common prefixes and suffixes, closed word classes and topic word sets. Data only.
"""

from __future__ import annotations

PUNCTUATION = {
    "period": ".", "comma": ",", "colon": ":", "semicolon": ";", "exclamation": "!",
    "question": "?", "apostrophe": "'’", "quote": "\"“”", "dash": "-–—", "open_bracket": "([{<",
    "close_bracket": ")]}>", "slash": "/\\", "math": "+*=^%", "currency": "$€£¥",
    "underscore": "_", "hash": "#", "at": "@", "ampersand": "&",
}
PREFIXES = ("un", "re", "in", "im", "dis", "non", "pre", "post", "sub", "inter", "over", "under",
            "anti", "de", "mis", "ex", "trans", "super", "semi", "multi", "auto", "counter")
SUFFIXES = ("ing", "ed", "ly", "s", "es", "er", "est", "tion", "sion", "ment", "ness", "able",
            "ible", "al", "ful", "less", "ous", "ive", "ity", "ize", "ise", "ism", "ist", "ship",
            "hood", "ward", "eth", "st")
CLOSED_CLASSES = {
    "pronoun": "i me my mine myself we us our ours ourselves you your yours yourself thou thee "
               "thy thine he him his himself she her hers herself it its itself they them their "
               "theirs themselves",
    "determiner": "the a an this that these those some any no every each either neither",
    "preposition": "of in on at by for with from to into onto upon about above below under over "
                   "between through during before after against among without within",
    "conjunction": "and or but nor so yet because although though while whereas if unless",
    "auxiliary": "is are was were be been being am have has had do does did will would shall "
                 "should can could may might must",
}
TOPIC_WORDS: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    "numbers": "zero one two three four five six seven eight nine ten eleven twelve thirteen "
               "fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty "
               "sixty seventy eighty ninety hundred thousand million billion first second third "
               "fourth fifth sixth seventh eighth ninth tenth dozen half",
    "months": "january february march april may june july august september october november "
              "december jan feb mar apr jun jul aug sep sept oct nov dec",
    "days": "monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu "
            "thur thurs fri sat",
    "family": "mother father mom mum dad brother brothers sister sisters son sons daughter "
              "daughters wife husband uncle aunt cousin grandmother grandfather grandson "
              "granddaughter parent parents child children baby family niece nephew",
    "colours": "red orange yellow green blue purple violet pink brown black white grey gray "
               "crimson scarlet indigo golden silver",
    "body": "head hand hands arm arms leg legs foot feet eye eyes ear ears nose mouth face "
            "heart hair finger fingers neck shoulder shoulders knee knees lips lip tongue teeth "
            "tooth blood skin bone bones brain breast belly",
    "animals": "cat cats dog dogs horse horses cow cows pig pigs sheep bird birds fish lion "
               "lions tiger bear wolf fox mouse mice rat rabbit deer snake eagle hawk bull "
               "goat duck hound",
    "food": "bread cheese meat apple apples rice milk butter wine beer water egg eggs cake "
            "fruit soup sugar salt honey corn wheat",
    "time": "second seconds minute minutes hour hours day days week weeks month months year "
            "years century decade morning evening night noon midnight today tomorrow yesterday",
    "royalty": "king kings queen queens prince princes princess lord lords lady ladies duke "
               "earl sir madam majesty throne crown court",
    "emotion": "love hate fear joy anger grief sorrow happy sad glad angry afraid proud shame "
               "pity hope",
    "weather": "rain snow wind winds storm sun cloud clouds thunder lightning frost fog weather",
    "direction": "north south east west northern southern eastern western left right",
    "places": "england france spain germany italy china japan india russia america rome greece "
              "egypt london paris scotland ireland wales europe africa asia",
}.items()}
