"""A synthetic corpus of personalised dialogues with long-term memory (seed 003's task), in
Russian and English, generated locally (no data set can be downloaded here).

Each dialogue opens with the user stating two or three facts about themselves (name, city, pet,
favourite colour, job, ...), goes on with several turns of small talk, and ends with the user
asking about one of the facts stated at the start: the agent's last response is right only if the
model carries the fact across the whole conversation. A model that sees only the last few dozen
tokens (a convolutional student with a short receptive field) can learn every template but must
guess the fact; a transformer that attends to the start of the dialogue can copy it. The recall
questions, their answers' fact values and the responses are recorded for the metrics
(``memory_recall``, ``hits@1``, ``token_f1``).

The output is one JSON object per line in ``train.jsonl``, ``val.jsonl`` and ``test.jsonl``::

    {"lang": "ru", "persona": ["Меня зовут Анна.", ...],
     "turns": [{"speaker": "user", "text": "..."}, {"speaker": "agent", "text": "..."}, ...],
     "recall": {"slot": "pet_name", "value": "Мурка"}}

Deterministic for a seed; a few thousand dialogues take well under a second.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# slot -> (statement by the user, the agent's acknowledgement, recall question, the agent's answer)
# per language; "{v}" is the fact's value. Each slot's values are drawn from VALUES. The answer
# repeats the word that precedes the value in the statement, a word no other slot or small talk
# puts before a value: the answer can be copied from the statement (what attention does; an
# "induction" pattern), and only from there.
TEMPLATES = {
    "ru": {
        "name": ("Моё имя {v}.", "Приятно познакомиться!", "Ты помнишь моё имя?", "Твоё имя {v}."),
        "city": ("Мой родной город {v}.", "Хороший город.", "Какой мой родной город?", "Твой родной город {v}."),
        "pet_name": ("У меня есть кошка, кличка кошки {v}.", "Люблю кошек!", "Как зовут мою кошку?",
                     "Кличка кошки {v}."),
        "color": ("Мой любимый цвет {v}.", "Красивый цвет.", "Какой мой любимый цвет?", "Твой любимый цвет {v}."),
        "job": ("Моя профессия {v}.", "Интересная работа.", "Кем я работаю?", "Твоя профессия {v}."),
        "food": ("Моя любимая еда {v}.", "Вкусно!", "Что я люблю есть больше всего?", "Твоя любимая еда {v}."),
    },
    "en": {
        "name": ("My name is {v}.", "Nice to meet you!", "Do you remember my name?", "Your name is {v}."),
        "city": ("I live in {v}.", "A fine city.", "Which city do I live in?", "You live in {v}."),
        "pet_name": ("I have a cat named {v}.", "I love cats!", "What is my cat called?", "Your cat is named {v}."),
        "color": ("I like the colour {v}.", "A lovely colour.", "What is my favourite colour?",
                  "You like the colour {v}."),
        "job": ("My job: {v}.", "An interesting job.", "What is my job?", "Your job: {v}."),
        "food": ("I love eating {v}.", "Tasty!", "What food do I like most?", "You love eating {v}."),
    },
}

VALUES = {
    "ru": {
        "name": ["Анна", "Борис", "Вера", "Глеб", "Дарья", "Егор", "Жанна", "Захар", "Ирина", "Кирилл", "Лидия",
                 "Максим", "Нина", "Олег", "Полина", "Роман", "Светлана", "Тимур", "Ульяна", "Фёдор"],
        "city": ["Москва", "Казань", "Пермь", "Омск", "Томск", "Самара", "Тверь", "Сочи", "Псков", "Курск",
                 "Рязань", "Иркутск", "Тула", "Уфа", "Калуга", "Мурманск"],
        "pet_name": ["Мурка", "Барсик", "Пушок", "Снежок", "Рыжик", "Тишка", "Маркиз", "Соня", "Белка", "Уголёк",
                     "Персик", "Луна", "Кекс", "Буся", "Дымка", "Васька"],
        "color": ["красный", "синий", "зелёный", "жёлтый", "белый", "чёрный", "серый", "розовый", "фиолетовый",
                  "оранжевый", "голубой", "коричневый"],
        "job": ["врач", "учитель", "инженер", "повар", "водитель", "художник", "юрист", "программист", "пилот",
                "бухгалтер", "строитель", "музыкант"],
        "food": ["борщ", "пельмени", "блины", "пирожки", "сырники", "плов", "окрошка", "вареники", "шашлык",
                 "солянка", "котлеты", "голубцы"],
    },
    "en": {
        "name": ["Alice", "Brian", "Clara", "Daniel", "Emma", "Felix", "Grace", "Henry", "Isla", "Jack", "Kate",
                 "Liam", "Mia", "Noah", "Olivia", "Peter", "Ruby", "Sam", "Tara", "Victor"],
        "city": ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin", "Oslo", "Lisbon",
                 "Warsaw", "Athens", "Boston", "Denver", "Toronto", "Sydney"],
        "pet_name": ["Tom", "Felix", "Luna", "Bella", "Oscar", "Milo", "Coco", "Simba", "Nala", "Ginger",
                     "Shadow", "Pepper", "Misty", "Tiger", "Smokey", "Daisy"],
        "color": ["red", "blue", "green", "yellow", "white", "black", "grey", "pink", "purple", "orange", "teal",
                  "brown"],
        "job": ["doctor", "teacher", "engineer", "cook", "driver", "painter", "lawyer", "programmer", "pilot",
                "banker", "builder", "musician"],
        "food": ["pizza", "pasta", "soup", "pancakes", "curry", "sushi", "noodles", "salad", "tacos", "burgers",
                 "risotto", "dumplings"],
    },
}

# small talk: (user, agent) pairs that carry no memory; drawn between the facts and the question
SMALL_TALK = {
    "ru": [
        ("Какая сегодня погода?", "Сегодня солнечно и тепло."), ("Что ты любишь читать?", "Я люблю читать сказки."),
        ("Ты смотришь фильмы?", "Да, особенно комедии."), ("Как прошёл твой день?", "Спокойно, спасибо."),
        ("Ты любишь музыку?", "Да, я слушаю джаз."), ("Сколько сейчас времени?", "Уже почти вечер."),
        ("Ты умеешь считать?", "Да, два плюс два четыре."), ("Что посоветуешь на выходные?", "Погулять в парке."),
        ("Ты любишь зиму?", "Зимой красиво, но холодно."), ("Какой сегодня день?", "Сегодня среда."),
        ("Ты играешь в шахматы?", "Немного, я учусь."), ("Расскажи анекдот.", "Колобок повесился."),
        ("Ты устал?", "Нет, я бодр и готов помочь."), ("Что ты ел на завтрак?", "Я не ем, я программа."),
        ("Куда поехать летом?", "На море или в горы."), ("Ты любишь спорт?", "Да, особенно футбол."),
    ],
    "en": [
        ("How is the weather today?", "It is sunny and warm."), ("What do you like to read?", "I like fairy tales."),
        ("Do you watch films?", "Yes, comedies most of all."), ("How was your day?", "Quiet, thank you."),
        ("Do you like music?", "Yes, I listen to jazz."), ("What time is it?", "It is almost evening."),
        ("Can you count?", "Yes, two plus two is four."), ("Any plans for the weekend?", "A walk in the park."),
        ("Do you like winter?", "Winter is pretty but cold."), ("What day is it?", "Today is Wednesday."),
        ("Do you play chess?", "A little, I am learning."), ("Tell me a joke.", "I would, but it is too long."),
        ("Are you tired?", "No, I am ready to help."), ("What did you have for breakfast?", "I do not eat."),
        ("Where should I go in summer?", "To the sea or the mountains."), ("Do you like sport?", "Yes, football."),
    ],
}

SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


def dialogue(rng: random.Random, lang: str, *, facts: tuple[int, int] = (2, 3),
             small_talk: tuple[int, int] = (1, 3)) -> dict:
    """One dialogue: the user states facts, chats, then asks about one of the facts."""
    slots = rng.sample(sorted(TEMPLATES[lang]), rng.randint(*facts))
    values = {slot: rng.choice(VALUES[lang][slot]) for slot in slots}
    turns, persona = [], []
    for slot in slots:
        statement, ack, _, _ = TEMPLATES[lang][slot]
        persona.append(statement.format(v=values[slot]))
        turns += [{"speaker": "user", "text": persona[-1]}, {"speaker": "agent", "text": ack}]
    for user, agent in rng.sample(SMALL_TALK[lang], rng.randint(*small_talk)):
        turns += [{"speaker": "user", "text": user}, {"speaker": "agent", "text": agent}]
    # every fact is asked about, in a random order; the last answer is the one the metrics score
    for slot in rng.sample(slots, len(slots)):
        _, _, question, answer = TEMPLATES[lang][slot]
        turns += [{"speaker": "user", "text": question}, {"speaker": "agent", "text": answer.format(v=values[slot])}]
    return {"lang": lang, "persona": persona, "turns": turns, "recall": {"slot": slot, "value": values[slot]}}


def generate(out: str | Path, *, dialogues: int = 2000, seed: int = 0, langs: tuple[str, ...] = ("ru", "en"),
             small_talk: tuple[int, int] = (1, 3)) -> dict:
    """Write ``dialogues`` dialogues split 80/10/10 into ``out``; returns a summary per split."""
    unknown = [lang for lang in langs if lang not in TEMPLATES]
    if unknown or not langs:
        raise ValueError(f"languages must be among {', '.join(TEMPLATES)}; got {', '.join(langs) or 'none'}")
    rng = random.Random(seed)
    items = [dialogue(rng, langs[i % len(langs)], small_talk=small_talk) for i in range(dialogues)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary, start = {}, 0
    for i, (split, share) in enumerate(SPLITS.items()):
        end = dialogues if i == len(SPLITS) - 1 else start + round(share * dialogues)
        part = items[start:end]
        tmp = out / f".{split}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in part), encoding="utf-8")
        tmp.replace(out / f"{split}.jsonl")
        summary[split] = {"dialogues": len(part), "turns": sum(len(d["turns"]) for d in part)}
        start = end
    return summary
