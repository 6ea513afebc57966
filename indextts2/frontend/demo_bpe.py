"""The demo bpe.model: a small SentencePiece BPE model trained on our own corpus, for the random demo
checkpoints (indextts2/presets.py), in the layout of the official bpe.model.
"""

from __future__ import annotations

import io
import unicodedata
from collections import Counter
from pathlib import Path

import sentencepiece as spm

from indextts2.frontend.text import START_TEXT_TOKEN, STOP_TEXT_TOKEN, split_cjk

__all__ = ["DEMO_CORPUS", "train_demo_bpe"]

# Training sentences: English, Chinese and mixed lines, written as the text normaliser returns them
# (numbers spelt out, punctuation mapped, pinyin corrected), because the official model was trained on
# normalised text; tests/test_text_frontend.py checks that normalising a line changes nothing. Training
# needs no normaliser: the English grammar takes ~0.1 s a line, and checkpoints are written in many
# processes.
DEMO_CORPUS = """\
The quick brown fox jumps over the lazy dog.
Good morning, everyone! Thank you for coming today.
How are you feeling this afternoon?
I would like a cup of tea, please.
She said, 'Let's meet at the station at eight thirty.'
The weather is lovely today, isn't it?
We walked along the river until the sun went down.
Please turn off the lights before you leave the room.
Could you tell me the way to the nearest library?
It is a beautiful day for a long walk in the park.
He has been working on this project for three years.
The train to London leaves at nine fifteen every morning.
My favourite season is autumn, when the leaves turn red and gold.
Reading a good book is the best way to spend a rainy evening.
They built a small house near the sea.
Where is the key? I left it on the kitchen table.
What is the time? It is almost midnight.
The children were laughing and playing in the garden.
Music has the power to bring people together.
Don't forget to call your mother on her birthday.
Technology changes the way we live and work.
A journey of a thousand miles begins with a single step.
The meeting has been moved to Thursday afternoon.
Please speak slowly and clearly, so everyone can understand.
I can't believe how fast this year has gone by!
The museum is open from Tuesday to Sunday.
There are three hundred and sixty five days in a year, and twelve months.
The price of the ticket is twenty five dollars, including the guide.
About seventy five percent of the students passed the final exam.
The voice sounded calm, warm and confident.
Our new model speaks English and Chinese with natural rhythm.
Text to speech systems turn written words into spoken audio.
Every sentence should end with a clear and gentle pause.
The speaker paused for a moment, then continued with a smile.
Who is ready for the next adventure?
This is the first time I have seen snow.
She won second place in the national competition.
The twenty first century brought many changes to daily life.
Open the window, it is getting warm in here.
He whispered, 'Don't be afraid, I am right here.'
The cat slept on the sofa all afternoon.
Fresh bread smells wonderful in the early morning.
We need eggs, milk, butter and a little sugar.
Learning a new language takes patience and practice.
The river flows quietly through the old town.
Could you please repeat that more slowly?
Wait… did you hear that sound?
Well, I suppose we could try again tomorrow.
The doctor said I should drink more water.
There is nothing more relaxing than a quiet evening at home.
The well-known writer signed copies of her latest novel.
My brother-in-law lives in a small village by the mountains.
Our flight was delayed by two hours because of the storm.
The garden is full of roses, tulips and sunflowers.
I think that is a wonderful idea!
Is this seat taken?
No, please sit down, make yourself at home.
The concert starts at seven o'clock in the evening.
He ran ten kilometres in just under an hour.
The population of the city is about two million five hundred thousand people.
The recipe needs two point five cups of flour and three eggs.
We'll meet again, don't know where, don't know when.
She opened the letter and began to read it aloud.
The night sky was full of bright stars.
Thank you very much for your kind help.
You are welcome, it was my pleasure.
Excuse me, where can I buy a ticket?
The shop on the corner sells fresh fruit and flowers.
Every morning he goes running before breakfast.
The old man told stories about his childhood by the sea.
A smile is the shortest distance between two people.
Let me think about it and get back to you.
The results will be announced next Monday.
Please keep your voice down, the baby is sleeping.
Happy birthday! I hope all your wishes come true.
The bridge was built more than one hundred years ago.
We should protect the environment for future generations.
The library has thousands of books in many languages.
This road leads to the top of the hill.
The soup is too hot, let it cool for a minute.
He plays the piano beautifully.
Their house has a red door and a big window.
I am sorry, I didn't catch your name.
My name is Anna, and I am from Canada.
The game ended in a draw, one to one.
Science helps us understand the world around us.
The ocean covers most of the surface of the earth.
A good friend is always there when you need one.
The lecture was long, but very interesting.
Keep calm and carry on.
The little girl asked, 'Why is the sky blue?'
Because sunlight is scattered by the air, her father replied.
After the rain, a rainbow appeared over the valley.
The bus was crowded, so we decided to walk.
I'll have the vegetable soup and a glass of orange juice.
Our team finished the project two weeks early.
The first chapter introduces the main characters.
Listen carefully, and you'll hear the birds singing.
The station is just five minutes from here.
How much does this jacket cost?
It costs forty dollars, but it is on sale today.
Time flies when you are having fun.
He opened the door and stepped into the cold night.
Be careful, the floor is wet!
Welcome to the show, ladies and gentlemen.
The machine learns from examples, one step at a time.
The model reads the text and predicts the sound of each word.
A clear voice makes a long story easy to follow.
Good night, and sweet dreams.
See you tomorrow at the same place.
The students listened to the teacher in silence.
I have never visited Japan, but I would love to go.
The first snow fell quietly over the city.
Please write your name at the top of the page.
The news spread quickly through the small town.
We watched the sunset from the top of the tower.
The more you practise, the better you become.
Nothing is impossible if you keep trying.
He closed his eyes and listened to the waves.
The phone rang three times, then stopped.
She laughed so hard that she started to cry.
Turn left at the second traffic light.
The exhibition will be open until the end of May.
Honesty is the best policy.
The robot said, 'Hello, human. How can I help you?'
They said the test would take about forty five minutes.
The road is closed 'because of the flood' until Friday.
The answer is simple, work hard, and be kind.
Everything will be fine, trust me.
今天天气很好,我们一起去公园散步吧.
你好,很高兴认识你!
请问,去火车站怎么走?
我每天早上七点起床,然后吃早饭.
这本书非常有意思,我已经看了两遍了.
他说,'明天我们一起去看电影,好吗?'
春天来了,花开了,小鸟在树上唱歌.
我们的学校有一个很大的图书馆.
你喜欢喝茶还是喝咖啡?
这个问题有点难,让我想一想.
妈妈做的饭菜总是那么好吃.
晚上的时候,天上有很多星星.
请大家安静一下,会议马上开始.
他是一个很有耐心的老师.
我们明天下午三点在门口见面.
这件衣服多少钱?
一百二十块,今天打八折.
小时候,我最喜欢听爷爷讲故事.
学习一门新的语言需要时间和耐心.
雨停了,天边出现了一道彩虹.
谢谢你的帮助,真是太感谢了!
不客气,这是我应该做的.
这个城市的夜景非常美丽.
你昨天晚上几点睡觉的?
我们一起努力,一定能成功.
他跑得很快,第一个到达了终点.
今年的冬天特别冷,下了好几场大雪.
请把窗户打开,房间里太热了.
我的家乡在一个小山村里,风景很美.
这家饭店的菜又便宜又好吃.
时间过得真快,一年又过去了.
你能再说一遍吗?我没有听清楚.
老师说,明天的考试很重要.
我觉得这个主意很好!
他一边听音乐,一边写作业.
周末我们去海边玩,好不好?
这条路一直走,就能看到银行.
孩子们在操场上开心地玩耍.
读书使人进步,学习让人快乐.
我有一个哥哥和一个妹妹.
今天是二零二五年一月一日,新年快乐!
这座桥已经有一百多年的历史了.
我每天走路上班,大概需要二十分钟.
他把手机忘在出租车上了.
你知道这个字怎么读吗?
我们应该保护环境,爱护地球.
这部电影讲的是一个关于友情的故事.
外面下雨了,记得带伞.
他说话的声音很温柔.
我的朋友明天要去北京出差.
这个苹果又大又红,看起来很甜.
你吃过北京烤鸭吗?
大家好,欢迎收听今天的节目.
语音合成技术可以把文字变成声音.
这个模型能用自然的语气说中文和英文.
每个句子的结尾都应该有一个自然的停顿.
他停了一下,然后笑着继续说下去.
请在下面的空白处写上你的名字.
那天晚上,月亮又大又圆.
我们一家人在一起吃年夜饭.
她的梦想是成为一名医生.
这里的空气很新鲜,环境也很安静.
他每天坚持锻炼身体.
你有什么问题,可以随时问我.
这次比赛,我们班得了第一名.
小猫在沙发上睡了一下午.
早上的面包闻起来特别香.
我们需要鸡蛋,牛奶,黄油和一点糖.
河水静静地流过古老的小镇.
等一下…你听到那个声音了吗?
好吧,那我们明天再试一次.
医生说我应该多喝水.
没有什么比在家里度过一个安静的晚上更放松的了.
暴风雨让我们的航班推迟了两个小时.
花园里开满了玫瑰,郁金香和向日葵.
这个座位有人吗?
没有,请坐吧,别客气.
音乐会晚上七点开始.
这座城市大约有两百五十万人口.
做这道菜需要两杯半的面粉和三个鸡蛋.
她打开信,开始大声地读起来.
非常感谢你的热情帮助.
对不起,请问在哪里买票?
拐角的那家店卖新鲜的水果和花.
老人讲起了他在海边度过的童年.
微笑是人与人之间最短的距离.
让我考虑一下,再回复你.
结果将在下周一公布.
请小声一点,宝宝正在睡觉.
生日快乐!祝你心想事成.
科学帮助我们了解周围的世界.
好朋友总是在你需要的时候出现在你身边.
这个讲座很长,但是非常有意思.
小女孩问,'为什么天空是蓝色的?'
雨后,山谷上空出现了一道彩虹.
公共汽车太挤了,所以我们决定走路.
我们的团队提前两周完成了项目.
仔细听,你会听到小鸟在唱歌.
车站离这里只有五分钟.
这件外套多少钱?
时间在快乐的时候总是过得很快.
小心,地板很滑!
欢迎来到我们的节目,女士们,先生们.
机器从例子中学习,一步一步地进步.
清晰的声音让长故事更容易听懂.
晚安,祝你做个好梦.
明天同一个地方见.
'红楼梦'是中国古代四大名著之一.
他的名字叫克里斯托弗-诺兰,是一位导演.
这个价格大概占总数的百分之三十.
我们的会议室在三楼,请走楼梯上去.
请不要在图书馆里大声说话.
这个消息很快就传遍了整个小镇.
我们在塔顶看日落.
越练习,就越熟练.
只要坚持,没有什么是不可能的.
他闭上眼睛,静静地听着海浪的声音.
电话响了三声,然后就停了.
第二个红绿灯向左转.
展览会一直开到五月底.
诚实是最好的策略.
答案很简单,努力工作,善待他人.
一切都会好起来的,相信我.
我爱你!
今天是个好日子 it is a good day.
IndexTTS 正式发布一点零版本了,效果六六六.
这个 model 的声音听起来很 natural.
我们用 Python 写了一个小程序.
明天的 meeting 改到下午三点了.
这款手机支持五G网络,价格是一千九百九十九元.
请打开 Wi-Fi,然后连接到网络.
我最喜欢的歌手是 Taylor Swift.
他在 Google 工作了五年.
这个 App 非常好用,推荐给你.
今天的 KPI 完成了吗?
我们下周去 New York 出差.
这部电影的英文名字叫 Inception.
他的 email 地址写错了.
GPT 五 是一个很大的语言模型.
晕XVAN4是一种GAN3觉.
最zhong4要的是,不要chong2蹈覆辙.
'衣裳'不读衣chang2,而是读衣shang5.
受不liao3你了.
不zuo1死就不会死.
这个字读JVE2,不读QVE4.
我们一起学习pin1yin1吧.
See you at 上午八点, 明天见.
OK,没问题,我马上就来.
这是 version 二 的新功能.
Hello,你好,欢迎来到中国!
Thank you,谢谢你的帮助.
He said 他明天不来了.
我喜欢听 jazz 和 rock 音乐.
这个 project 的 deadline 是下周五.
The weather in Beijing is cold in winter.
Shanghai is one of the largest cities in the world.
I am learning Chinese, and it is a lot of fun.
My Chinese teacher speaks very slowly and clearly.
"""


def _demo_lines(vocab_size: int) -> list[str]:
    """Corpus lines as the GPT reads them (CJK split, upper-cased), dropping the lines with the rarest
    characters until the character set leaves a quarter of vocab_size for merged pieces (SentencePiece
    needs every character of the training text in the vocabulary, and its character_coverage cannot go
    below 0.98)."""
    lines = [split_cjk(line) for line in DEMO_CORPUS.splitlines() if line.strip()]
    # SentencePiece's own normalisation (nmt_nfkc) turns "…" into "..."; "▁" stands for the spaces.
    char_budget = vocab_size - 3 - vocab_size // 4
    while True:
        counts = Counter(
            char for line in lines for char in unicodedata.normalize("NFKC", line).replace(" ", "▁")
        )
        counts["▁"] += len(lines)
        if len(counts) <= char_budget:
            return lines
        rarest = min(counts, key=lambda char: (counts[char], char))
        lines = [line for line in lines if rarest not in line]


def train_demo_bpe(out_path: str | Path, vocab_size: int) -> Path:
    """Train a small SentencePiece BPE model on DEMO_CORPUS and write it to out_path.

    vocab_size must not exceed the GPT's number_text_tokens; the corpus supports up to 3543. From
    750 up every character of the corpus has a piece; smaller vocabularies (down to 64, e.g. 100
    for the tiny golden GPT) leave out the lines with the rarest characters, mostly Chinese ones, which
    then encode as <unk>.

    Same layout as the official bpe.model: <s> = 0 (start_text_token), </s> = 1 (stop_text_token),
    <unk> = 2, no padding piece. Deterministic: one thread, no sampling or shuffling, trained from an
    in-memory iterator so that no path ends up inside the model; the same vocab_size gives the same bytes.
    """
    if vocab_size < 64:
        raise ValueError(f"vocab_size must be >= 64, got {vocab_size}")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_demo_lines(vocab_size)),
            model_writer=writer,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            bos_id=START_TEXT_TOKEN,
            eos_id=STOP_TEXT_TOKEN,
            unk_id=2,
            pad_id=-1,
            bos_piece="<s>",
            eos_piece="</s>",
            unk_piece="<unk>",
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise ValueError(f"cannot train a demo bpe.model with vocab_size {vocab_size}: {error}") from error
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(writer.getvalue())
    return out_path
