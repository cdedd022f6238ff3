"""MMIU's task keys: the 60 keys of the data's `task` field, their relations, and the 52 paper tasks.

Key spellings are the data's own (`casuality`, `meme_vedio`, `threeD_*` beside `threed_*`, mixed
case). Relations follow the image folders of the official release and the authors' per-relation
task lists; 8 paper tasks are split by source into two keys each.
"""
from __future__ import annotations

RELATIONS = ('Low-level-semantic', 'High-level-obj-semantic', 'High-level-sub-semantic',
             'Discrete-temporal', 'Continuous-temporal', '2D-spatial', '3D-spatial')

_BY_RELATION = {
    'Low-level-semantic': (
        'forensic_detection_blink', 'forensic_detection_forgerynet',
        'visual_quality_assessment_q_bench+', 'visual_quality_assessment_ve_lol_l'),
    'High-level-obj-semantic': (
        'visually_grounded_reasoning_marvl', 'visually_grounded_reasoning_nlvr2',
        'image2image_retrieval', 'sketch2image_retrieval', 'text2image_retrieval',
        'vehicle_retrieval', 'face_retrieval', 'handwritten_retrieval', 'person_reid',
        'spot_the_diff', 'spot_the_similarity', 'visual_correspondence_blink',
        'visual_correspondence_scannet', 'semantic_correspondence_blink',
        'semantic_correspondence_misc210k', 'functional_correspondence_blink',
        'functional_correspondence_funk_point'),
    'High-level-sub-semantic': (
        'emotion_recognition_expw', 'emotion_recognition_findingemo', 'casuality_reasoning_next_qa',
        'casuality_reasoning_var', 'multiple_image_captioning'),
    'Discrete-temporal': (
        'visual_coherence', 'textual_cloze', 'gui_app_recognition', 'gui_next_action_prediction',
        'visual_cloze', 'visual_ordering'),
    'Continuous-temporal': (
        'general_action_recognition', 'video_captioning', 'next_img_prediction', 'temporal_ordering',
        'meme_vedio_understanding', 'action_quality_assessment', 'temporal_localization', 'mevis'),
    '2D-spatial': (
        'ravens_progressive_matrices', 'jigsaw_puzzle_solving',
        'Image_Captioning_with_Spatial_Context', 'Icon_Question_Answering_with_Spatial_Context',
        'Image_text_retrieval_with_Spatial_Context', 'Image_Spatial_Transformation_Estimation',
        'Homography_estimation', 'point_tracking', 'single_object_tracking'),
    '3D-spatial': (
        'threeD_Scene_Reconstruction', 'threeD_Object_Detection', 'Egocentric_Video_QuestionAnswering',
        'threeD_Object_Tracking', 'threeD_Pose_Estimation', 'Multiview_reasoning',
        'Multiview_Action_Recognition', 'threeD_Depth_Estimation', 'threeD_question_answering',
        'threed_cad_recognition', 'threed_indoor_recognition'),
}

# data key -> relation, for the 60 keys.
RELATION_OF_KEY = {k: r for r, keys in _BY_RELATION.items() for k in keys}

# The 8 paper tasks that the data splits by source, as {data key: paper task}.
SPLIT_KEYS = {
    f'{task}_{source}': task
    for task, sources in {
        'casuality_reasoning': ('next_qa', 'var'),
        'emotion_recognition': ('expw', 'findingemo'),
        'forensic_detection': ('blink', 'forgerynet'),
        'functional_correspondence': ('blink', 'funk_point'),
        'semantic_correspondence': ('blink', 'misc210k'),
        'visual_correspondence': ('blink', 'scannet'),
        'visual_quality_assessment': ('q_bench+', 've_lol_l'),
        'visually_grounded_reasoning': ('marvl', 'nlvr2'),
    }.items() for source in sources}

# Keys whose prompt puts the question before the context (VLMEvalKit/test_qwen3_vl.py `tasks_exist`).
QUESTION_FIRST = frozenset((
    'person_reid', 'multiple_image_captioning', 'spot_the_similarity', 'face_retrieval',
    'sketch2image_retrieval', 'handwritten_retrieval', 'spot_the_diff', 'image2image_retrieval',
    'vehicle_retrieval', 'text2image_retrieval', 'general_action_recognition', 'video_captioning',
    'next_img_prediction', 'temporal_ordering', 'meme_vedio_understanding',
    'action_quality_assessment', 'temporal_localization', 'mevis', 'ravens_progressive_matrices',
    'threed_indoor_recognition', 'point_tracking', 'threed_cad_recognition', 'single_object_tracking'))


def paper_task(key: str) -> str:
  """The paper task of a data key: the split keys merge into their task, the others are their own."""
  return SPLIT_KEYS.get(key, key)
