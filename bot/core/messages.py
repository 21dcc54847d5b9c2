"""The message catalogue: texts by language and key, in English and Vietnamese; and the core's own texts.

Nothing a user reads is hard-coded: code renders a key in the user's locale (Telegram
`language_code`, Discord `locale`, the browser's language), with English standing in for an unknown
locale and for a text not yet translated. The texts here are the ones the core says (refusals of a
request, errors of a job); each frontend keeps its own next to it (bot/frontends/*/strings.py) in a
`Catalogue` over these, which renders the core's refusals as it renders the frontend's own texts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.core.errors import UserError

FALLBACK_LOCALE = "en"
LANGUAGES = ("en", "vi")

Strings = dict[str, dict[str, str]]  # language -> key -> template with {placeholders}

STRINGS: Strings = {
    "en": {
        "prompt_empty": "The prompt is empty. Describe the picture, e.g. /imagine a red fox in the snow --ar 16:9",
        "prompt_too_long": "The prompt is {got} characters long; the limit is {limit}.",
        "negative_too_long": "The negative prompt is {got} characters long; the limit is {limit}.",
        "prompt_negative_label": "The prompt may not contain \"{label}\". Put what to leave out of the picture "
                                 "after --no (or in the negative prompt field), e.g. /imagine a red fox --no blurry, text",
        "negative_prompt_label": "The negative prompt may not contain \"{label}\"; give only what to leave out, "
                                 "e.g. --no blurry, text",
        "flag_unknown": "Unknown option --{flag}. Allowed: {allowed}.",
        "flag_needs_value": "--{flag} needs a value, e.g. {example}.",
        "flag_twice": "--{flag} was given twice; give it once.",
        "flag_conflict": "Give either --size or --ar, not both.",
        "not_integer": "{name} must be a whole number, got '{got}'.",
        "not_number": "{name} must be a number, got '{got}'.",
        "out_of_range": "{name} must be {low}-{high}, got {got}.",
        "bad_size": "Size must look like 768x512 (width x height), got '{got}'.",
        "bad_aspect": "Aspect ratio must look like 16:9, got '{got}'.",
        "aspect_out_of_range": "Aspect ratio {got} is too extreme; allowed from 1:4 to 4:1.",
        "side_out_of_range": "Width and height must be {low}-{high} pixels, got {width}x{height}.",
        "too_many_pixels": "{width}x{height} is {pixels} pixels; the limit is {limit} (e.g. {example}).",
        "model_side_too_large": "{model} draws images up to {limit} px a side, so {width}x{height} is too large; its native size is {native}.",
        "model_pixels_too_large": "{model} draws images of up to {limit} pixels, so {width}x{height} is too large; its native size is {native}.",
        "bad_model_name": "'{got}' is not a model name. Names use letters, digits, '.', '_' and '-'.",
        "unknown_model": "There is no model '{got}'. Available: {available}.",
        "no_models": "No model is installed, so '{got}' cannot be used. Put a model in {models_dir}/{got}/: a diffusers model folder (with model_index.json) or a .safetensors checkpoint, plus a variant.toml saying kind = \"pipeline\" or file = \"model.safetensors\". See docs/models.md.",
        "model_broken": "Model '{name}' cannot be used right now: {error}",
        "unknown_scheduler": "Unknown scheduler '{got}'. Allowed: {allowed}.",
        "model_offline": "Model '{name}' comes from the hub ({repo}) and is not downloaded, and this machine is offline. Download it on a machine with internet access, or copy it into {folder}.",
        "out_of_memory": "The GPU ran out of memory for {width}x{height}, even one image at a time. Try a smaller size or fewer steps.",
        "cancelled": "The job was cancelled.",
        "flag_takes_no_value": "--{flag} takes no value (got '{got}'); put it after the prompt, e.g. a fox in the snow --{flag}.",
        "not_switch": "{name} is on or off (true/false), got '{got}'.",
        "no_fast_mode": "Model '{model}' has no fast mode. Leave out --fast, or pick a model that has one{fast_models}.",
        "upscale_too_large": "An upscale of {width}x{height} would be larger than {limit} px a side, the limit for upscaled images.",
        "upscaler_missing": "The upscaler '{name}' is not usable: {error}",
        "strength_out_of_range": "--strength must be 0.1-1 (how far the image may change), got {got}.",
        "iw_out_of_range": "--iw must be 0-2 (how much the image counts), got {got}.",
        "strength_and_iw": "Give either --strength or --iw, not both: they set the same thing.",
        "mask_needs_image": "A mask needs the image it belongs to.",
        "upload_empty": "The {what} is empty.",
        "upload_too_large": "The {what} is {got}; the limit is {limit}.",
        "upload_not_image": "The {what} is not a picture this bot reads. Send {formats}.",
        "upload_too_many_pixels": "The {what} is {size} pixels; the limit is {limit} pixels. Send a smaller one.",
        "upload_unknown": "That {what} is unknown or has expired; upload it again.",
        "uploads_full": "Too many images are waiting to be used right now; try again in a few minutes.",
        "user_uploads_full": "You already keep {count} uploaded images ({size}); the limit is {limit} images and {limit_size}. Use them, or wait: unused uploads expire within an hour.",
        "address_uploads_full": "Your network address already keeps {count} uploaded images ({size}); the limit is {limit} images and {limit_size}. Use them, or wait: unused uploads expire within an hour.",
        "describe_rate_limited": "You asked to describe {count} pictures in the last minute; the limit is {limit}. Try again in a minute.",
        "describe_not_configured": "/describe is not set up on this server: it needs a captioning model, which an admin of the bot can add.",
        "describe_not_configured_admin": "/describe needs a captioning model, and none is set up. To add one: download a BLIP model on a machine with internet access (huggingface-cli download Salesforce/blip-image-captioning-base --local-dir models/blip-base), copy the folder here and set [describe] model = \"models/blip-base\" in config.toml.",
        "describe_broken": "The captioning model for /describe cannot be used: {error}",
        "describe_nothing": "The captioning model had nothing to say about this picture; try another one.",
        "refiner_out_of_range": "--refiner is where the refiner takes over, as a fraction of the steps: 0 (no refiner) up to 0.99, e.g. --refiner 0.7; got {got}.",
        "no_refiner": "Model '{model}' has no refiner, so --refiner cannot be used with it. A base model names its refiner in its variant.toml: refiner = \"NAME\".",
        "model_is_refiner": "'{name}' is a refiner: it finishes the images of a base model and cannot draw from a prompt alone. Name it in an SDXL base model's variant.toml (refiner = \"{name}\") and use that model.",
        "negative_needs_cfg": "A negative prompt only works on '{model}' with guidance above {low} (--cfg), and it is {got}. Raise --cfg (e.g. --cfg 4) or leave --no out.",
        "family_no_img2img": "{family} models cannot start from an image here. Draw from a prompt alone, or pick a model of another family.",
        "family_no_inpaint": "{family} models cannot repaint part of an image here. Start from the whole image instead, or pick a model of another family.",
        "family_no_negative": "'{model}' is a {family} model, which has no negative prompt: it was distilled to follow the prompt alone. Say what you want instead (e.g. 'a sharp photo' rather than --no blurry), or pick another model. An admin can enable it with true_cfg = 4 in the model's [defaults] (each step then takes twice as long).",
        "family_no_negative_ever": "'{model}' is a {family} model, which has no negative prompt: it was distilled to follow the prompt alone. Say what you want instead (e.g. 'a sharp photo' rather than --no blurry), or pick another model.",
        "family_no_weights": "'{model}' is a {family} model: its text encoder reads plain sentences, not (word:1.3) weights. Say the emphasis in words, e.g. 'a very red apple', or pick a Stable Diffusion 1.x/2.x/XL model.",
        "family_scheduler": "'{model}' is a {family} model, which draws with {allowed}; '{got}' does not work with it. Leave --sampler out or use one of those.",
        "family_no_guidance": "'{model}' is a {family} model, which takes no guidance: leave --cfg out.",
        "family_no_loras": "'{model}' is a {family} model; LoRAs do not load on it here.",
        "model_is_refiner_of": "'{name}' is a refiner: it finishes the images of a base model and cannot draw from a prompt alone. Use --model {bases}; it runs '{name}' for the last steps (--refiner 0.7 changes where, --refiner 0 turns it off).",
        "model_is_inpainting": "'{name}' is an inpainting model: it redraws a marked region of an existing image and cannot draw from a prompt alone. For new images use one of: {available}.",
        "init_image_missing": "The start image {got} does not exist.",
        "banned": "You cannot use this bot: {reason}",
        "queue_full": "Jobs you have waiting: {count}; the limit is {limit}. Wait for one to finish or cancel one.",
        "rate_limited": "You have made {count} requests in the last hour; the limit is {limit}. Try again later.",
        "not_admin": "Only admins can do that.",
        "ban_bad_address": "{address} is not a network address: ban one as address:203.0.113.7 or address:2001:db8::7.",
        "job_not_found": "There is no job #{job}.",
        "job_ambiguous": "More than one of your jobs starts with #{job}; give more of its id.",
        "not_your_job": "Job #{job} belongs to someone else; only they or an admin can change it.",
        "already_finished": "Job #{job} has already finished ({status}).",
        "worker_crashed": "The worker stopped while making this ({attempts} attempts); giving up.",
        "timed_out": "This took longer than {seconds} s and was stopped.",
        "generation_failed": "Generating failed ({error}). The bot keeps running; try again or tell an admin.",
        "shutting_down": "The bot is restarting; try again in a minute.",
        "nothing_to_cancel": "You have no job waiting or running to cancel.",
        "blocked_word": "The prompt contains '{word}', which is not allowed here.",
        "ban_needs_reason": "Say why: the banned user is shown the reason.",
        "bad_user_name": "A user name is 1 to 32 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit; got '{got}'.",
        "password_too_short": "The password must be at least {min} characters long.",
        "password_too_long": "The password must be at most {max} characters long.",
        "user_exists": "There is already a user '{name}'.",
        "no_such_user": "There is no user '{name}'.",
        "password_needs_terminal": "No terminal to ask the password on: pipe it in with --password-stdin.",
        "passwords_differ": "The two passwords differ; nothing was changed.",
        "address_queue_full": "{count} jobs from your network address are already waiting; the limit is {limit}. Wait for some to finish.",
        "address_rate_limited": "{count} requests came from your network address in the last hour; the limit is {limit}. Try again later.",
        "chat_admins_only": "Only this chat's admins (or the bot's) can change its defaults.",
        "storage_full": "The server's disk is full, so nothing new can be queued right now. Try again later; an admin has to free some space.",
        "storage_unavailable": "The server cannot save jobs right now. Try again in a minute.",
        "no_such_image": "Job #{job} has no finished image {index}.",
        "prompt_weights_bad": "The prompt's weights cannot be read: {problem}. Weights are written as in AUTOMATIC1111: (word:1.3) sets a weight from 0 to 10, (word) is 1.1, [word] is 1/1.1, \\( is a literal bracket.",
        "lora_weight_bad": "The LoRA weight '{got}' for {name} is not a number from -10 to 10; write <lora:{name}:0.8> or --lora {name}:0.8.",
        "lora_unknown": "There is no LoRA '{got}'. LoRAs for {model}: {available}.",
        "lora_not_a_lora": "'{got}' is a full model, not a LoRA; choose it with --model {got}.",
        "lora_wrong_base": "LoRA '{got}' is made for {base}, not for {model}; use --model {base}, or one of: {available}.",
        "too_many_loras": "{count} LoRAs were asked for; at most {limit} can be used at once.",
        "no_remix_prompt": "Remix needs the new prompt; type it, e.g. a blue fox in the snow.",
    },
    "vi": {
        "prompt_empty": "Câu mô tả đang trống. Hãy mô tả bức ảnh, ví dụ: /imagine một con cáo đỏ trên tuyết --ar 16:9",
        "prompt_too_long": "Câu mô tả dài {got} ký tự; giới hạn là {limit}.",
        "negative_too_long": "Câu mô tả loại trừ dài {got} ký tự; giới hạn là {limit}.",
        "prompt_negative_label": "Câu mô tả không được chứa \"{label}\". Hãy ghi những gì cần loại khỏi ảnh "
                                 "sau --no (hoặc trong ô câu mô tả loại trừ), ví dụ: /imagine một con cáo đỏ --no mờ, chữ",
        "negative_prompt_label": "Câu mô tả loại trừ không được chứa \"{label}\"; chỉ ghi những gì cần loại bỏ, "
                                 "ví dụ: --no mờ, chữ",
        "flag_unknown": "Không có tùy chọn --{flag}. Các tùy chọn hợp lệ: {allowed}.",
        "flag_needs_value": "--{flag} cần một giá trị, ví dụ {example}.",
        "flag_twice": "--{flag} được nhập hai lần; chỉ nhập một lần.",
        "flag_conflict": "Chỉ dùng --size hoặc --ar, không dùng cả hai.",
        "not_integer": "{name} phải là số nguyên, nhận được '{got}'.",
        "not_number": "{name} phải là một số, nhận được '{got}'.",
        "out_of_range": "{name} phải trong khoảng {low}-{high}, nhận được {got}.",
        "bad_size": "Kích thước phải có dạng 768x512 (rộng x cao), nhận được '{got}'.",
        "bad_aspect": "Tỉ lệ khung hình phải có dạng 16:9, nhận được '{got}'.",
        "aspect_out_of_range": "Tỉ lệ {got} quá lệch; cho phép từ 1:4 đến 4:1.",
        "side_out_of_range": "Chiều rộng và chiều cao phải trong khoảng {low}-{high} điểm ảnh, nhận được {width}x{height}.",
        "too_many_pixels": "{width}x{height} là {pixels} điểm ảnh; giới hạn là {limit} (ví dụ {example}).",
        "model_side_too_large": "{model} vẽ ảnh tối đa {limit} px mỗi cạnh nên {width}x{height} quá lớn; kích thước gốc của nó là {native}.",
        "model_pixels_too_large": "{model} vẽ ảnh tối đa {limit} điểm ảnh nên {width}x{height} quá lớn; kích thước gốc của nó là {native}.",
        "bad_model_name": "'{got}' không phải tên mô hình. Tên chỉ gồm chữ, số, '.', '_' và '-'.",
        "unknown_model": "Không có mô hình '{got}'. Hiện có: {available}.",
        "no_models": "Chưa cài mô hình nào nên không dùng được '{got}'. Hãy đặt mô hình vào {models_dir}/{got}/: một thư mục mô hình diffusers (có model_index.json) hoặc một tệp .safetensors, kèm variant.toml ghi kind = \"pipeline\" hoặc file = \"model.safetensors\". Xem docs/models.md.",
        "model_broken": "Mô hình '{name}' hiện không dùng được: {error}",
        "unknown_scheduler": "Không có bộ lấy mẫu '{got}'. Các giá trị hợp lệ: {allowed}.",
        "model_offline": "Mô hình '{name}' lấy từ hub ({repo}) nhưng chưa được tải về, và máy này không có mạng. Hãy tải nó trên máy có mạng, hoặc chép vào {folder}.",
        "out_of_memory": "GPU hết bộ nhớ với kích thước {width}x{height}, kể cả khi tạo từng ảnh. Hãy thử kích thước nhỏ hơn hoặc ít bước hơn.",
        "cancelled": "Yêu cầu đã bị hủy.",
        "flag_takes_no_value": "--{flag} không nhận giá trị (nhận được '{got}'); đặt nó sau mô tả, ví dụ a fox in the snow --{flag}.",
        "not_switch": "{name} là bật hoặc tắt (true/false), nhận được '{got}'.",
        "no_fast_mode": "Mô hình '{model}' không có chế độ nhanh. Bỏ --fast, hoặc chọn một mô hình có chế độ này{fast_models}.",
        "upscale_too_large": "Phóng to thành {width}x{height} sẽ vượt quá {limit} px mỗi cạnh, giới hạn cho ảnh phóng to.",
        "upscaler_missing": "Bộ phóng to '{name}' không dùng được: {error}",
        "strength_out_of_range": "--strength phải trong khoảng 0.1-1 (ảnh được đổi bao nhiêu), nhận được {got}.",
        "iw_out_of_range": "--iw phải trong khoảng 0-2 (ảnh được tính bao nhiêu), nhận được {got}.",
        "strength_and_iw": "Chỉ dùng --strength hoặc --iw, không dùng cả hai: chúng đặt cùng một thứ.",
        "mask_needs_image": "Mặt nạ cần đi kèm ảnh của nó.",
        "upload_empty": "Tệp {what} trống.",
        "upload_too_large": "Tệp {what} nặng {got}; giới hạn là {limit}.",
        "upload_not_image": "Tệp {what} không phải ảnh bot đọc được. Hãy gửi {formats}.",
        "upload_too_many_pixels": "Ảnh {what} có {size} điểm ảnh; giới hạn là {limit}. Hãy gửi ảnh nhỏ hơn.",
        "upload_unknown": "Không tìm thấy {what} đó hoặc nó đã hết hạn; hãy tải lên lại.",
        "uploads_full": "Hiện có quá nhiều ảnh đang chờ được dùng; hãy thử lại sau vài phút.",
        "user_uploads_full": "Bạn đang giữ {count} ảnh đã tải lên ({size}); giới hạn là {limit} ảnh và {limit_size}. Hãy dùng chúng, hoặc chờ: ảnh không dùng sẽ hết hạn trong vòng một giờ.",
        "address_uploads_full": "Địa chỉ mạng của bạn đang giữ {count} ảnh đã tải lên ({size}); giới hạn là {limit} ảnh và {limit_size}. Hãy dùng chúng, hoặc chờ: ảnh không dùng sẽ hết hạn trong vòng một giờ.",
        "describe_rate_limited": "Bạn đã yêu cầu mô tả {count} ảnh trong một phút qua; giới hạn là {limit}. Hãy thử lại sau một phút.",
        "describe_not_configured": "/describe chưa được cài đặt trên máy chủ này: cần một mô hình chú thích ảnh, quản trị viên của bot có thể thêm.",
        "describe_not_configured_admin": "/describe cần một mô hình chú thích ảnh nhưng chưa có. Cách thêm: tải mô hình BLIP trên máy có mạng (huggingface-cli download Salesforce/blip-image-captioning-base --local-dir models/blip-base), chép thư mục vào đây và đặt [describe] model = \"models/blip-base\" trong config.toml.",
        "describe_broken": "Không dùng được mô hình chú thích ảnh của /describe: {error}",
        "describe_nothing": "Mô hình chú thích không nói được gì về ảnh này; hãy thử ảnh khác.",
        "refiner_out_of_range": "--refiner là điểm mô hình tinh chỉnh tiếp quản, tính theo phần số bước: từ 0 (không tinh chỉnh) đến 0.99, ví dụ --refiner 0.7; nhận được {got}.",
        "no_refiner": "Mô hình '{model}' không có mô hình tinh chỉnh, nên không dùng được --refiner. Mô hình gốc khai báo mô hình tinh chỉnh trong variant.toml: refiner = \"TÊN\".",
        "model_is_refiner": "'{name}' là mô hình tinh chỉnh (refiner): nó hoàn thiện ảnh của một mô hình gốc, không tự vẽ từ mô tả được. Khai báo nó trong variant.toml của một mô hình SDXL gốc (refiner = \"{name}\") rồi dùng mô hình đó.",
        "negative_needs_cfg": "Mô tả loại trừ chỉ có tác dụng trên '{model}' khi hệ số hướng dẫn lớn hơn {low} (--cfg), hiện là {got}. Hãy tăng --cfg (ví dụ --cfg 4) hoặc bỏ --no.",
        "family_no_img2img": "Mô hình {family} không bắt đầu từ một ảnh được. Hãy vẽ chỉ từ mô tả, hoặc chọn mô hình thuộc họ khác.",
        "family_no_inpaint": "Mô hình {family} không vẽ lại một phần ảnh được. Hãy bắt đầu từ cả ảnh, hoặc chọn mô hình thuộc họ khác.",
        "family_no_negative": "'{model}' là mô hình {family}, không có mô tả loại trừ: nó được chưng cất để chỉ theo mô tả. Hãy nói điều bạn muốn (ví dụ 'ảnh sắc nét' thay cho --no blurry), hoặc chọn mô hình khác. Quản trị viên có thể bật nó bằng true_cfg = 4 trong [defaults] của mô hình (mỗi bước khi đó lâu gấp đôi).",
        "family_no_negative_ever": "'{model}' là mô hình {family}, không có mô tả loại trừ: nó được chưng cất để chỉ theo mô tả. Hãy nói điều bạn muốn (ví dụ 'ảnh sắc nét' thay cho --no blurry), hoặc chọn mô hình khác.",
        "family_no_weights": "'{model}' là mô hình {family}: bộ mã hoá văn bản của nó đọc câu thường, không đọc trọng số (word:1.3). Hãy diễn đạt bằng lời, ví dụ 'một quả táo rất đỏ', hoặc chọn mô hình Stable Diffusion 1.x/2.x/XL.",
        "family_scheduler": "'{model}' là mô hình {family}, chỉ vẽ với {allowed}; '{got}' không dùng được. Hãy bỏ --sampler hoặc dùng một trong số đó.",
        "family_no_guidance": "'{model}' là mô hình {family}, không nhận hệ số hướng dẫn: hãy bỏ --cfg.",
        "family_no_loras": "'{model}' là mô hình {family}; LoRA không nạp được lên nó ở đây.",
        "model_is_refiner_of": "'{name}' là mô hình tinh chỉnh (refiner): nó hoàn thiện ảnh của một mô hình gốc, không tự vẽ từ mô tả được. Hãy dùng --model {bases}; mô hình này chạy '{name}' ở các bước cuối (--refiner 0.7 đổi điểm tiếp quản, --refiner 0 tắt nó).",
        "model_is_inpainting": "'{name}' là mô hình inpainting: nó vẽ lại một vùng được đánh dấu của ảnh có sẵn, không tự vẽ từ mô tả được. Để tạo ảnh mới hãy dùng: {available}.",
        "init_image_missing": "Ảnh gốc {got} không tồn tại.",
        "banned": "Bạn không thể dùng bot này: {reason}",
        "queue_full": "Bạn đang có {count} yêu cầu chờ; giới hạn là {limit}. Hãy đợi một yêu cầu xong hoặc hủy bớt.",
        "rate_limited": "Bạn đã gửi {count} yêu cầu trong giờ qua; giới hạn là {limit}. Hãy thử lại sau.",
        "not_admin": "Chỉ quản trị viên mới làm được việc này.",
        "ban_bad_address": "{address} không phải là địa chỉ mạng: hãy chặn theo dạng address:203.0.113.7 hoặc address:2001:db8::7.",
        "job_not_found": "Không có yêu cầu #{job}.",
        "job_ambiguous": "Có nhiều yêu cầu của bạn bắt đầu bằng #{job}; hãy ghi dài hơn.",
        "not_your_job": "Yêu cầu #{job} là của người khác; chỉ họ hoặc quản trị viên mới thay đổi được.",
        "already_finished": "Yêu cầu #{job} đã kết thúc ({status}).",
        "worker_crashed": "Bộ tạo ảnh đã dừng khi làm yêu cầu này ({attempts} lần thử); đã bỏ qua.",
        "timed_out": "Yêu cầu mất hơn {seconds} giây nên đã bị dừng.",
        "generation_failed": "Tạo ảnh thất bại ({error}). Bot vẫn chạy; hãy thử lại hoặc báo quản trị viên.",
        "shutting_down": "Bot đang khởi động lại; hãy thử lại sau một phút.",
        "nothing_to_cancel": "Bạn không có yêu cầu nào đang chờ hoặc đang chạy để hủy.",
        "blocked_word": "Câu mô tả có '{word}', từ này không được phép ở đây.",
        "ban_needs_reason": "Hãy ghi lý do: người bị chặn sẽ thấy lý do này.",
        "bad_user_name": "Tên người dùng gồm 1 đến 32 chữ thường, chữ số, '.', '_' hoặc '-', bắt đầu bằng chữ hoặc số; nhận được '{got}'.",
        "password_too_short": "Mật khẩu phải dài ít nhất {min} ký tự.",
        "password_too_long": "Mật khẩu chỉ được dài tối đa {max} ký tự.",
        "user_exists": "Đã có người dùng '{name}'.",
        "no_such_user": "Không có người dùng '{name}'.",
        "password_needs_terminal": "Không có cửa sổ lệnh để hỏi mật khẩu: hãy truyền vào bằng --password-stdin.",
        "passwords_differ": "Hai mật khẩu khác nhau; không có gì thay đổi.",
        "address_queue_full": "Đã có {count} yêu cầu từ địa chỉ mạng của bạn đang chờ; giới hạn là {limit}. Hãy đợi một số yêu cầu xong.",
        "address_rate_limited": "Địa chỉ mạng của bạn đã gửi {count} yêu cầu trong một giờ qua; giới hạn là {limit}. Hãy thử lại sau.",
        "chat_admins_only": "Chỉ quản trị viên của cuộc trò chuyện này (hoặc của bot) mới đổi được tùy chọn mặc định.",
        "storage_full": "Ổ đĩa của máy chủ đã đầy nên chưa thể xếp hàng yêu cầu mới. Hãy thử lại sau; quản trị viên cần giải phóng dung lượng.",
        "storage_unavailable": "Máy chủ tạm thời không lưu được yêu cầu. Hãy thử lại sau một phút.",
        "no_such_image": "Yêu cầu #{job} không có ảnh hoàn chỉnh số {index}.",
        "prompt_weights_bad": "Không đọc được trọng số trong câu mô tả: {problem}. Trọng số viết như AUTOMATIC1111: (từ:1.3) đặt trọng số từ 0 đến 10, (từ) là 1.1, [từ] là 1/1.1, \\( là dấu ngoặc thường.",
        "lora_weight_bad": "Trọng số LoRA '{got}' của {name} không phải số từ -10 đến 10; hãy viết <lora:{name}:0.8> hoặc --lora {name}:0.8.",
        "lora_unknown": "Không có LoRA '{got}'. Các LoRA cho {model}: {available}.",
        "lora_not_a_lora": "'{got}' là một mô hình đầy đủ, không phải LoRA; hãy chọn nó bằng --model {got}.",
        "lora_wrong_base": "LoRA '{got}' được làm cho {base}, không phải cho {model}; hãy dùng --model {base}, hoặc một trong: {available}.",
        "too_many_loras": "Yêu cầu có {count} LoRA; chỉ dùng được tối đa {limit} cùng lúc.",
        "no_remix_prompt": "Remix cần câu mô tả mới; hãy nhập nó, ví dụ: một con cáo xanh trên tuyết.",
    },
}


def pick_locale(locale: str | None) -> str:
    """Map a platform locale ("vi", "vi-VN", "en_US", None) or a browser's Accept-Language list
    ("vi,en;q=0.8") to a catalogue language."""
    if not locale:
        return FALLBACK_LOCALE
    choices = []
    for position, part in enumerate(locale.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        choices.append((-quality, position, tag.replace("_", "-").split("-")[0].strip().lower()))
    for _, _, language in sorted(choices):
        if language in LANGUAGES:
            return language
    return FALLBACK_LOCALE


class Catalogue:
    """Templates by language and key, rendered in a user's locale. A key this catalogue does not
    have is looked up in `base`: a frontend's texts sit over the core's."""

    def __init__(self, strings: Strings, base: Catalogue | None = None) -> None:
        self.strings = strings
        self.base = base

    def __contains__(self, key: object) -> bool:
        return key in self.strings[FALLBACK_LOCALE] or (self.base is not None and key in self.base)

    def render(self, key: str, locale: str | None = None, **params: object) -> str:
        """The text of `key` in the user's language; a missing key or parameter is a KeyError."""
        return self._template(key, pick_locale(locale)).format(**params)

    def explain(self, error: UserError, locale: str | None) -> str:
        """A refusal in the user's language, with this catalogue's wording where it has the key."""
        return self.render(error.key, locale, **error.params)

    def texts(self, locale: str | None, prefix: str = "") -> dict[str, str]:
        """This catalogue's own texts (not its base's) in one language, English where a translation
        is missing: for a page that renders its texts itself."""
        language = pick_locale(locale)
        merged = {**self.strings[FALLBACK_LOCALE], **self.strings[language]}
        return {key: text for key, text in merged.items() if key.startswith(prefix)}

    def _template(self, key: str, language: str) -> str:
        template = self.strings[language].get(key) or self.strings[FALLBACK_LOCALE].get(key)
        if template is not None:
            return template
        if self.base is None:
            raise KeyError(key)
        return self.base._template(key, language)


CORE = Catalogue(STRINGS)
render = CORE.render
